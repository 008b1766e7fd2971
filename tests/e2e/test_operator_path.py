"""The PIP operator's Ansible path on a real lab: `vnet plan` writes the extra
vars, a plain ansible-playbook (with the collection built and installed by
ansible-galaxy, conftest's vnet_env) checks and applies them, `vnet adopt`
records the result so `vnet status`, `vnet show` and `vnet down` know it; the
inventory plugin reads the substrate description instead of the generated
inventory; `vnet up` draws its live status line on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, netns_list, new_lab, ping

FIGURE6 = EXAMPLES / "figure6.xml"
BIN = Path(sys.executable).parent


def playbook(env: dict[str, str], inventory: Path, *args: str,
             cwd: Path) -> subprocess.CompletedProcess[str]:
    """A plain ansible-playbook: the collection only through ANSIBLE_COLLECTIONS_PATH."""
    run_env = {k: v for k, v in env.items() if k != "VNET_COLLECTIONS_PATH"}
    run_env["ANSIBLE_COLLECTIONS_PATH"] = env["VNET_COLLECTIONS_PATH"]
    run_env["ANSIBLE_NOCOLOR"] = "1"
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                           "vnet.infra.deploy_vnet", *args], env=run_env, cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def lab(vnet: Vnet) -> Iterator[Lab]:
    """One lab (a PIP of three hosts, no players) for this file's tests."""
    made = new_lab(vnet, "--pips", "1", "--no-players")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def substrate_dir(env: dict[str, str], substrate: str) -> Path:
    return Path(env["VNET_HOME"]) / "substrates" / substrate


def inventory_list(env: dict[str, str], inventory: Path) -> dict[str, Any]:
    run_env = {**env, "ANSIBLE_COLLECTIONS_PATH": env["VNET_COLLECTIONS_PATH"]}
    done = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inventory), "--list"],
                          env=run_env, capture_output=True, text=True, timeout=120, check=True)
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def plain(value: Any) -> Any:
    """ansible-inventory's JSON without 2.19's {"__ansible_unsafe": ...} wrappers."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def vn_netns(substrate: str, vnet_id: str) -> set[str]:
    return {n for n in netns_list() if n.startswith(f"vn-{substrate}-{vnet_id}-")}


def test_plan_check_apply_adopt_show_down(vnet: Vnet, lab: Lab, tmp_path: Path) -> None:
    env, substrate = vnet.env, lab.substrate
    inventory = substrate_dir(env, substrate) / "inventory.yml"
    plan_file = tmp_path / "plan.yml"

    made = vnet.json("plan", str(FIGURE6), "--substrate", substrate, "-o", str(plan_file))
    data = yaml.safe_load(plan_file.read_text())
    assert set(data) == {"vnet_plan", "vnet_state", "vnet_record"}
    assert data["vnet_state"] == "present" and data["vnet_plan"]["vnet"] == made["vnet"]
    vnet_id = made["vnet"]
    assert set(data["vnet_plan"]["hosts"]) <= {"h1", "h2", "h3"}
    assert data["vnet_record"]["embedding"]["node_map"] == made["node_map"]
    assert vnet.json("status") == []  # planning records nothing

    check = playbook(env, inventory, "-e", f"@{plan_file}", "--check", "--diff", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"vn-{substrate}-{vnet_id}-r1" in check.stdout  # the diff names what would come
    assert "changed=" in check.stdout and "failed=0" in check.stdout
    assert vn_netns(substrate, vnet_id) == set()  # check mode changed nothing

    # The inventory plugin gives the hosts and connection variables of the
    # generated inventory, from the substrate description alone.
    plugin_config = tmp_path / "substrate.vnet.yml"
    plugin_config.write_text("plugin: vnet.infra.substrate\nsubstrate: "
                             f"{substrate_dir(env, substrate) / 'substrate.xml'}\n")
    from_plugin = plain(inventory_list(env, plugin_config))
    generated = plain(inventory_list(env, inventory))
    assert from_plugin["_meta"]["hostvars"] == generated["_meta"]["hostvars"]
    assert from_plugin["substrate"]["hosts"] == generated["substrate"]["hosts"]
    assert {g for g in from_plugin["all"]["children"] if g.startswith("location_")}

    applied = playbook(env, plugin_config, "-e", f"@{plan_file}", cwd=tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert len(vn_netns(substrate, vnet_id)) == 6
    assert ping(f"vn-{substrate}-{vnet_id}-e1", "198.19.0.2")
    assert vnet.json("status") == []  # applied, not yet known

    adopted = vnet.json("adopt", str(plan_file))
    assert adopted == {"vnet": vnet_id, "substrate": substrate, "state": "ready",
                       "hosts": sorted(data["vnet_plan"]["hosts"])}
    assert vnet.json("adopt", str(plan_file))["state"] == "unchanged"
    status = vnet.json("status", vnet_id)
    assert status["status"] == "ready"
    assert status["embedding"]["node_map"] == made["node_map"]
    assert json.loads(json.dumps(status["plan"])) == data["vnet_plan"]
    assert vnet.json("exec", vnet_id, "e1", "--", "ping", "-c", "1", "-W", "2",
                     "198.19.0.2")["rc"] == 0

    if shutil.which("dot") is not None:  # rendering needs Graphviz; the DOT source does not
        picture = Path(os.environ.get("VNET_ARTIFACTS") or tmp_path)
        picture.mkdir(parents=True, exist_ok=True)
        png = picture / "figure6-embedded.png"
        vnet.run("show", vnet_id, "--format", "png", "-o", str(png))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        print(f"\nkept {png}")
    else:
        print("\nno Graphviz: the PNG of `vnet show` is not checked")
    dot = vnet.run("show", vnet_id, "--format", "dot").stdout
    for host in set(made["node_map"].values()):
        assert f'label="host {host} (' in dot

    # The adopted VNet holds its tunnel ids: the next plan takes others, and a
    # plan edited after it was made is refused without recording anything.
    second = tmp_path / "second.yml"
    vnet.run("plan", str(FIGURE6), "--substrate", substrate, "-o", str(second))
    second_data = yaml.safe_load(second.read_text())
    vnis = {t["tunnel"]["vni"] for h in data["vnet_plan"]["hosts"].values()
            for t in h["links"] if t.get("tunnel")}
    assert vnis and not vnis & {t["tunnel"]["vni"] for h in second_data["vnet_plan"]["hosts"]
                                .values() for t in h["links"] if t.get("tunnel")}
    tampered = tmp_path / "tampered.yml"
    first_host = next(iter(second_data["vnet_plan"]["hosts"].values()))
    first_host["nodes"][0]["forwarding"] = not first_host["nodes"][0]["forwarding"]
    tampered.write_text(yaml.safe_dump(second_data))
    refused = vnet.run("adopt", str(tampered), check=False)
    assert refused.returncode == 2 and "vnet_plan is not the plan" in refused.stderr
    clash = yaml.safe_load(plan_file.read_text())
    clash["vnet_record"]["vnet"] = clash["vnet_plan"]["vnet"] = "figure6-other"
    (tmp_path / "clash.yml").write_text(yaml.safe_dump(clash))
    refused = vnet.run("adopt", str(tmp_path / "clash.yml"), check=False)
    assert refused.returncode == 2 and "tunnel ids" in refused.stderr
    assert [v["vnet"] for v in vnet.json("status")] == [vnet_id]

    vnet.run("down", vnet_id)
    assert vn_netns(substrate, vnet_id) == set()
    assert vnet.json("status") == []
    gone = {**data, "vnet_state": "absent"}
    (tmp_path / "absent.yml").write_text(yaml.safe_dump(gone))
    assert vnet.json("adopt", str(tmp_path / "absent.yml"))["state"] == "unknown"


def test_up_draws_a_live_line_on_a_terminal(vnet: Vnet, lab: Lab) -> None:
    """`vnet up --check` on a pseudo-terminal: the status line is drawn and
    cleared on stderr; the same command through a pipe writes no progress."""
    reader, writer = pty.openpty()
    env = {k: v for k, v in vnet.env.items() if k != "VNET_PROGRESS"}
    argv = [sys.executable, "-m", "vnetlib.cli.main", "up", str(FIGURE6), "--substrate",
            lab.substrate, "--check"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=writer)
        os.close(writer)
        writer = -1
        seen = b""
        while True:
            ready = select.select([reader], [], [], 60)[0]
            if not ready:
                break
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # the pty's other side closed
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=120) == 0
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        proc.stdout.close()
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # ours, by its pid
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        if writer >= 0:
            os.close(writer)
        os.close(reader)
    text = seen.decode(errors="replace")
    assert "\r\x1b[2K" in text and "task: " in text, text
    last = text.rsplit("\x1b[2K", 1)[1].strip()  # after the line's last clearing:
    assert last == "" or re.fullmatch(r"task: .+: \d+\.\ds", last), last  # a kept step
    assert "check mode: nothing changed" in out
    piped = vnet.run("up", str(FIGURE6), "--substrate", lab.substrate, "--check")
    assert piped.stderr == "" and "check mode" in piped.stdout

