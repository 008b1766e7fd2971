"""vnet.infra.vnet_click through ansible-playbook on a namespace host: check
mode changes nothing, apply starts Click and the link carries pings, a second
run changes nothing (same process), another VNet's segments show in the diff
and arrive by hot swap, state absent stops Click with the last segment."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import ansible_runner
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from click_lab import Lab, nsx, two_hosts

from vnetlib.click.process import ClickError, find_click

ROOT = Path(__file__).resolve().parents[2]

try:
    find_click()
except ClickError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"{exc}", allow_module_level=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with two_hosts(tmp_path / "run") as lab:
        yield lab


@pytest.fixture
def collections(tmp_path: Path) -> Path:
    infra = tmp_path / "coll" / "ansible_collections" / "vnet" / "infra"
    infra.mkdir(parents=True)
    for part in ("galaxy.yml", "meta", "plugins"):
        (infra / part).symlink_to(ROOT / part)
    return tmp_path / "coll"


def module(collections: Path, workdir: Path, args: dict, *, check: bool = False,
           fails: bool = False) -> dict:
    play = workdir / "play.yml"
    task = {"name": "click", "vnet.infra.vnet_click": args}
    play.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": [task]}]))
    inventory = workdir / "inventory.ini"
    inventory.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    (workdir / "runner").mkdir(exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(workdir / "runner"), playbook=str(play), inventory=str(inventory),
        cmdline="--diff" + (" --check" if check else ""),
        envvars={"ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1",
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                         f"{os.environ.get('PATH', '/usr/bin:/bin')}"},
        quiet=True, timeout=120)
    events = [e for e in runner.events if e.get("event") in ("runner_on_ok", "runner_on_failed")]
    assert len(events) == 1, runner.stdout.read()[-3000:]
    results = [events[0]["event_data"]["res"]]
    failed = events[0]["event"] == "runner_on_failed"
    assert failed == fails, json.dumps(results[0], indent=1)[-3000:]
    return dict(results[0])


def test_check_apply_idempotent_diff_absent(lab: Lab, collections: Path,
                                            tmp_path: Path) -> None:
    segs = [lab.segment("l1", 6001, "vb6001", h) for h in (0, 1)]
    a = lab.node("a", 0, "vb6001", "198.19.0.1/24")
    lab.node("b", 1, "vb6001", "198.19.0.2/24")
    lab.deploy("v1", [[], [segs[1]]])
    inst = lab.instance(0)
    args = {"vnet": "v1", "netns": lab.hosts[0], "rundir": str(lab.rundir),
            "links": [asdict(segs[0])]}

    res = module(collections, tmp_path, args, check=True)
    assert res["changed"] and res["action"] == "start"
    assert inst.pid() is None and segs[0].device not in nsx(lab.hosts[0], "ip", "link").stdout

    res = module(collections, tmp_path, args)
    assert res["changed"] and res["action"] == "start"
    pid = inst.pid()
    assert pid is not None
    assert "0 received" not in nsx(a, "ping", "-c", "2", "-W", "1", "198.19.0.2").stdout

    for check in (True, False):
        res = module(collections, tmp_path, args, check=check)
        assert not res["changed"] and res["action"] == "none", res
    assert inst.pid() == pid

    other = lab.segment("l1", 6002, "vb6002", 0)
    args2 = {**args, "vnet": "v2", "links": [asdict(other)]}
    res = module(collections, tmp_path, args2, check=True)
    assert res["changed"] and res["action"] == "hotswap"
    assert "001772" not in res["diff"]["before"] and "001772" in res["diff"]["after"]
    res = module(collections, tmp_path, args2)
    assert res["action"] == "hotswap" and inst.pid() == pid
    assert "4/001772" in (inst.running_config() or "")

    res = module(collections, tmp_path, {**args2, "state": "absent"})
    assert res["action"] == "hotswap" and "001772" not in (inst.running_config() or "")
    assert other.device not in nsx(lab.hosts[0], "ip", "link").stdout
    res = module(collections, tmp_path, {**args, "state": "absent"})
    assert res["changed"] and res["action"] == "stop"
    assert inst.pid() is None and _gone(pid)


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: the module's Click outlives the module, whose
    process reaped nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_names_that_would_leave_the_state_directory_or_enter_click_text_fail(
        collections: Path, tmp_path: Path) -> None:
    """The module fails, saying why, and touches nothing: a VNet or instance
    name is one path part, link fields are checked before any device is made."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    victim = rundir / "x.json"  # what <rundir>/host/owners/../../x.json would unlink
    victim.write_text("[]")
    base = {"rundir": str(rundir), "state": "absent"}
    res = module(collections, tmp_path, {**base, "vnet": "../../x"}, fails=True)
    assert "Click on this host: VNet '../../x' is not a name" in res["msg"]
    res = module(collections, tmp_path, {**base, "vnet": "v1", "instance": "../h"}, fails=True)
    assert "Click instance '../h' is not a name" in res["msg"]
    link = {"link": "l1", "vni": 6001, "bridge": "vb6001", "device": "vx6001",
            "click_device": "ck6001", "local": "198.18.0.1",
            "remote": "198.18.0.2, 1, 198.18.0.9"}
    res = module(collections, tmp_path, {"rundir": str(rundir), "vnet": "v1", "links": [link]},
                 fails=True)
    assert "remote '198.18.0.2, 1, 198.18.0.9' is not an IPv4 address" in res["msg"]
    assert victim.read_text() == "[]"
    assert sorted(p.name for p in rundir.rglob("*")) in (["x.json"], ["host", "lock", "owners",
                                                                     "x.json"])
