"""`vnet lab up --switch-vlan`: each PIP's switch namespace gets its own Open
vSwitch (ovsdb-server, ovs-vswitchd), which carries VLAN traffic between two
nodes in that namespace; `lab down` stops both daemons by pid."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ovs_lab import pings

from vnetlib.lab import testbed
from vnetlib.switch import daemons
from vnetlib.switch import lab as switch_lab
from vnetlib.switch.daemon import PortRef, SwitchDaemon, VlanPool
from vnetlib.switch.driver import OvsDriver

try:
    daemons.find_tools()
except daemons.OvsError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)


def sh(*argv: str, check: bool = True) -> None:
    subprocess.run(argv, check=check, capture_output=True, timeout=60)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[testbed.LabSpec]:
    monkeypatch.setenv("VNET_HOME", str(tmp_path / "home"))
    spec = testbed.LabSpec(name="o" + secrets.token_hex(1), pips=1, hosts=1, players=False,
                           switch_vlan=True)
    try:
        testbed.up(spec)
        yield spec
    finally:
        testbed.down(spec.name)


def test_lab_switch_ovs_up_carries_vlans_down_stops(lab: testbed.LabSpec) -> None:
    directory = testbed.lab_dir(lab.name)
    sub = lab.substrates()[0].name
    inst = switch_lab.instances(directory)[sub]
    switch_ns = f"vl-{sub}-switch"
    assert inst.netns == switch_ns and inst.running()
    pids = [inst.pid("ovsdb-server"), inst.pid("ovs-vswitchd")]
    assert all(_same_netns(pid, switch_ns) for pid in pids)
    assert testbed.up(lab).created == []  # idempotent: nothing new started

    nodes = [f"{lab.name}x{i}" for i in range(2)]
    try:
        with OvsDriver(inst.remote, f"vs-{sub}") as drv:
            d = SwitchDaemon(VlanPool(switch_lab.pool_path(directory, sub), sub), {"s": drv})
            for i, ns in enumerate(nodes):
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", f"{ns}h", "netns", switch_ns, "type", "veth",
                   "peer", "name", "eth0", "netns", ns)
                sh("ip", "-n", switch_ns, "link", "set", f"{ns}h", "up")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "addr", "add", f"198.18.9.{i + 1}/24", "dev", "eth0")
            vid = d.attach("v1", "l1", [PortRef("s", f"{ns}h") for ns in nodes])
            assert drv.ports()[f"{nodes[0]}h"].tag == vid
            assert pings(nodes[0], "198.18.9.2")
    finally:
        for ns in nodes:
            sh("ip", "netns", "del", ns, check=False)

    testbed.down(lab.name)
    assert not inst.running()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def _same_netns(pid: int | None, ns: str) -> bool:
    st_p = Path(f"/proc/{pid}/ns/net").stat()
    st_n = Path(f"/run/netns/{ns}").stat()
    return (st_p.st_dev, st_p.st_ino) == (st_n.st_dev, st_n.st_ino)
