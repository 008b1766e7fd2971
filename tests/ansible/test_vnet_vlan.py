"""vnet.infra.vnet_vlan through ansible-playbook against a real Open vSwitch
(the lab's daemons, userspace datapath): check mode changes nothing, apply
makes the bridge and the ports and the nodes ping, a second run (check and
apply) changes nothing, a VLAN change shows in the diff and separates the
nodes, state absent takes the ports off, a bad port is refused."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from ovs_lab import Lab, ovs_lab, pings

from vnetlib.switch.driver import OvsSwitch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with ovs_lab() as lab:
        yield lab


@pytest.fixture
def collections(tmp_path: Path) -> Path:
    infra = tmp_path / "coll" / "ansible_collections" / "vnet" / "infra"
    infra.mkdir(parents=True)
    for part in ("galaxy.yml", "meta", "plugins"):
        (infra / part).symlink_to(ROOT / part)
    return tmp_path / "coll"


def module(collections: Path, workdir: Path, args: dict, *, check: bool = False,
           fail: bool = False) -> dict:
    play = workdir / "play.yml"
    task = {"name": "vlan", "vnet.infra.vnet_vlan": args}
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
    results = [(e["event"], e["event_data"]["res"]) for e in runner.events
               if e.get("event") in ("runner_on_ok", "runner_on_failed")]
    assert len(results) == 1, runner.stdout.read()[-3000:]
    event, res = results[0]
    assert (event == "runner_on_failed") == fail, json.dumps(res, indent=1)[-3000:]
    return dict(res)


def _ports(lab: Lab, bridge: str) -> dict[str, Any]:
    with OvsSwitch(lab.ovs.remote) as sw:
        return dict(sw.ports(bridge)) if sw.has_bridge(bridge) else {}


def test_check_apply_idempotent_diff_absent(lab: Lab, collections: Path,
                                            tmp_path: Path) -> None:
    a, pa = lab.node("198.18.5.1/24")
    _, pb = lab.node("198.18.5.2/24")
    bridge = f"{lab.prefix}br"
    args = {"bridge": bridge, "db": lab.ovs.remote,
            "ports": [{"name": pa, "vlan": 101}, {"name": pb, "vlan": 101}]}

    res = module(collections, tmp_path, args, check=True)
    assert res["changed"] and res["bridge_created"] and len(res["changes"]) == 2
    assert _ports(lab, bridge) == {}

    res = module(collections, tmp_path, args)
    assert res["changed"] and [p["tag"] for p in res["ports"]] == [101, 101]
    assert {n: (p.mode, p.tag) for n, p in _ports(lab, bridge).items()} == {
        pa: ("access", 101), pb: ("access", 101)}
    assert pings(a, "198.18.5.2")

    for check in (True, False):
        res = module(collections, tmp_path, args, check=check)
        assert not res["changed"] and res["changes"] == [], res

    moved = {**args, "ports": [{"name": pb, "vlan": 102}]}
    res = module(collections, tmp_path, moved, check=True)
    assert res["changed"] and res["diff"]["before"][pb]["tag"] == 101
    assert res["diff"]["after"][pb]["tag"] == 102
    module(collections, tmp_path, moved)
    assert not pings(a, "198.18.5.2", count=1)

    uplink = {**args, "ports": [{"name": pb, "trunks": [102, 101]}]}
    res = module(collections, tmp_path, uplink)
    assert res["ports"] == [{"name": pb, "mode": "trunk", "tag": None, "trunks": [101, 102]}]

    res = module(collections, tmp_path, {**args, "state": "absent"})
    assert res["changed"] and _ports(lab, bridge) == {}
    res = module(collections, tmp_path, {**args, "state": "absent"})
    assert not res["changed"]

    bad = {**args, "ports": [{"name": pa, "vlan": 4095}]}
    res = module(collections, tmp_path, bad, fail=True)
    assert "outside 1..4094" in res["msg"]
    res = module(collections, tmp_path, {**args, "ports": [{"name": pa}]}, fail=True)
    assert "exactly one of vlan and trunks" in res["msg"]
    res = module(collections, tmp_path, {**args, "db": "unix:/nonexistent/db.sock"}, fail=True)
    assert "unix:/nonexistent/db.sock" in res["msg"]
    assert os.path.exists(lab.ovs.db_sock)
