"""Switch VLANs on a real Open vSwitch (userspace datapath, daemons the lab
starts): the switch daemon's VLAN per segment separates VNets by traffic,
also when they use the same address plan and when a node sends double-tagged
frames; VLAN ids in use are never handed out twice; the daemons stop by pid."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ovs_lab import Lab, nsx, ovs_lab, pings, tagged_frame

from vnetlib.switch import daemons
from vnetlib.switch.daemon import PARKING_VLAN, PortRef, SwitchDaemon, VlanError, VlanPool
from vnetlib.switch.driver import OvsDriver, OvsError


@pytest.fixture
def lab() -> Iterator[Lab]:
    with ovs_lab() as lab:
        yield lab


@pytest.fixture
def switch(lab: Lab) -> Iterator[OvsDriver]:
    with OvsDriver(lab.ovs.remote, f"{lab.prefix}br") as drv:
        yield drv


def _daemon(lab: Lab, drivers: dict[str, OvsDriver],
            trunks: dict[str, list[str]] | None = None) -> SwitchDaemon:
    pool = VlanPool(lab.ovs.rundir / "vlans.sqlite", "berlin")
    return SwitchDaemon(pool, drivers, trunks)


def test_same_vlan_pings_other_vlan_does_not(lab: Lab, switch: OvsDriver) -> None:
    d = _daemon(lab, {"s": switch})
    a, pa = lab.node("198.18.0.1/24")
    _, pb = lab.node("198.18.0.2/24")
    _, pc = lab.node("198.18.0.3/24")
    v1 = d.attach("v1", "l1", [PortRef("s", pa), PortRef("s", pb)])
    v2 = d.attach("v2", "l1", [PortRef("s", pc)])
    assert v1 != v2
    ports = switch.ports()
    assert (ports[pa].mode, ports[pa].tag) == ("access", v1)
    assert (ports[pc].mode, ports[pc].tag) == ("access", v2)
    assert pings(a, "198.18.0.2")
    assert not pings(a, "198.18.0.3")
    # moving c into the segment joins it; detaching a takes its port off the switch
    d.detach("v2", "l1")
    assert pc not in switch.ports()
    d.attach("v1", "l1", [PortRef("s", pc)])
    assert pings(a, "198.18.0.3")
    d.detach("v1", "l1")
    assert switch.ports() == {} and d.pool.in_use() == {}
    assert not pings(a, "198.18.0.2", count=1)


def test_same_address_plan_isolated_arp_broadcast(lab: Lab, switch: OvsDriver) -> None:
    d = _daemon(lab, {"s": switch})
    a1, pa1 = lab.node("198.18.1.1/24")
    b1, pb1 = lab.node("198.18.1.2/24")
    a2, pa2 = lab.node("198.18.1.1/24")
    b2, pb2 = lab.node("198.18.1.2/24")
    d.attach("v1", "lan", [PortRef("s", pa1), PortRef("s", pb1)])
    d.attach("v2", "lan", [PortRef("s", pa2), PortRef("s", pb2)])
    assert pings(a1, "198.18.1.2") and pings(a2, "198.18.1.2")
    neigh1 = nsx(a1, "ip", "neigh", "show", "198.18.1.2").stdout
    neigh2 = nsx(a2, "ip", "neigh", "show", "198.18.1.2").stdout
    assert lab.mac(b1) in neigh1 and lab.mac(b2) not in neigh1
    assert lab.mac(b2) in neigh2 and lab.mac(b1) not in neigh2
    marker = b"vnet-bcast-" + lab.prefix.encode()
    bcast = tagged_frame(lab.mac(a1), [], marker)
    assert lab.frames(a1, bcast, b1, marker) > 0  # the listener sees what it should
    assert lab.frames(a1, bcast, b2, marker) == 0
    assert lab.frames(a1, bcast, a2, marker) == 0


def test_double_tagged_frame_stays_in_its_vnet(lab: Lab, switch: OvsDriver) -> None:
    d = _daemon(lab, {"s": switch})
    a1, pa1 = lab.node("198.18.2.1/24")
    b1, pb1 = lab.node("198.18.2.2/24")
    _, pa2 = lab.node("198.18.2.1/24")
    b2, pb2 = lab.node("198.18.2.2/24")
    d.attach("v1", "lan", [PortRef("s", pa1), PortRef("s", pb1)])
    v2 = d.attach("v2", "lan", [PortRef("s", pa2), PortRef("s", pb2)])
    marker = b"vnet-qinq-" + lab.prefix.encode()
    src = lab.mac(a1)
    for vlans in ([v2, v2], [v2], [0, v2], [v2, 1]):
        frame = tagged_frame(src, vlans, marker)
        assert lab.frames(a1, frame, b2, marker) == 0, vlans
        if vlans[0]:  # an access port drops frames tagged with a VLAN id
            assert lab.frames(a1, frame, b1, marker) == 0, vlans
    # a priority tag (VLAN id 0) counts as the port's own VLAN: the inner tag
    # is then payload inside this VNet, which is where the frame stays
    assert lab.frames(a1, tagged_frame(src, [0, v2], marker), b1, marker) > 0
    assert lab.frames(a1, tagged_frame(src, [], marker), b1, marker) > 0


def test_trunk_between_two_switches(lab: Lab) -> None:
    with OvsDriver(lab.ovs.remote, f"{lab.prefix}b1") as s1, \
            OvsDriver(lab.ovs.remote, f"{lab.prefix}b2") as s2:
        t1, t2 = f"{lab.prefix}t1", f"{lab.prefix}t2"
        lab.veth(t1, t2)
        d = _daemon(lab, {"s1": s1, "s2": s2}, {"s1": [t1], "s2": [t2]})
        d.sync_trunks()
        assert (s1.ports()[t1].mode, s1.ports()[t1].tag) == ("access", PARKING_VLAN)
        a1, pa1 = lab.node("198.18.3.1/24")
        b1, pb1 = lab.node("198.18.3.2/24")
        a2, pa2 = lab.node("198.18.3.1/24")
        _, pb2 = lab.node("198.18.3.2/24")
        v1 = d.attach("v1", "lan", [PortRef("s1", pa1), PortRef("s2", pb1)])
        assert pings(a1, "198.18.3.2")
        d.attach("v2", "lan", [PortRef("s1", pa2), PortRef("s1", pb2)])  # local to s1
        assert s1.ports()[t1].trunks == (v1,) and s2.ports()[t2].trunks == (v1,)
        assert pings(a2, "198.18.3.2")
        neigh = nsx(a1, "ip", "neigh", "show", "198.18.3.2").stdout
        assert lab.mac(b1) in neigh
        d.detach("v1", "lan")
        assert s1.ports()[t1].tag == PARKING_VLAN and not pings(a1, "198.18.3.2", count=1)


def _grab(path: str, n: int) -> list[int]:
    pool = VlanPool(Path(path), "berlin")
    return [pool.allocate("v", f"{path}-{multiprocessing.current_process().pid}-{i}")
            for i in range(n)]


def test_vlan_ids_never_reused_while_in_use(tmp_path: Path) -> None:
    db = tmp_path / "vlans.sqlite"
    reserved = set(range(1, 4085)) | {4094}  # leaves 4085..4093: nine ids
    pool = VlanPool(db, "berlin", reserved=reserved)
    assert pool.capacity() == 9
    got = [pool.allocate("v1", f"l{i}") for i in range(9)]
    assert sorted(got) == list(range(4085, 4094))
    assert pool.allocate("v1", "l3") == got[3]  # same segment, same id
    with pytest.raises(VlanError, match="no free VLAN id"):
        pool.allocate("v2", "l0")
    assert pool.release("v1", "l3") == got[3]
    again = VlanPool(db, "berlin", reserved=reserved)  # persisted, new process view
    assert again.free() == 1 and again.allocate("v2", "l0") == got[3]
    assert VlanPool(db, "london").allocate("v9", "x") == 2  # a substrate of its own

    # two processes allocating at once still never share an id
    wide = tmp_path / "wide.sqlite"
    VlanPool(wide, "berlin")
    # spawn, not fork: a fork of this (threaded) pytest process can deadlock on
    # a lock another thread held at the fork (seen once in CI: a worker stuck)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as workers:
        lists = workers.starmap(_grab, [(str(wide), 40), (str(wide), 40)])
    ids = lists[0] + lists[1]
    assert len(set(ids)) == 80 and 1 not in ids and PARKING_VLAN not in ids


def test_port_serves_one_segment_and_daemons_stop(lab: Lab, switch: OvsDriver) -> None:
    d = _daemon(lab, {"s": switch})
    _, pa = lab.node("198.18.4.1/24")
    d.attach("v1", "l1", [PortRef("s", pa)])
    with pytest.raises(VlanError, match="already serves v1/l1"):
        d.attach("v2", "l1", [PortRef("s", pa)])
    assert d.pool.lookup("v2", "l1") is None  # rolled back
    assert switch.ports()[pa].tag == d.pool.lookup("v1", "l1")
    pids = [lab.ovs.pid("ovsdb-server"), lab.ovs.pid("ovs-vswitchd")]
    assert all(pids)
    assert daemons.start(lab.ovs.rundir) == lab.ovs  # idempotent: same daemons
    assert [lab.ovs.pid("ovsdb-server"), lab.ovs.pid("ovs-vswitchd")] == pids
    switch.close()
    assert daemons.stop(lab.ovs) and not lab.ovs.running()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_switch_down_fails_and_rolls_back(lab: Lab) -> None:
    with OvsDriver(lab.ovs.remote, f"{lab.prefix}br", timeout=2) as drv:
        d = _daemon(lab, {"s": drv})
        _, pa = lab.node("198.18.6.1/24")
        daemons.stop(lab.ovs)
        with pytest.raises(OvsError, match="OVSDB at unix:"):
            d.attach("v1", "l1", [PortRef("s", pa)])
        assert d.pool.in_use() == {} and d.pool.ports("v1", "l1") == []


TCP_SERVER = ("import socket\ns=socket.create_server(('0.0.0.0',5301)); print('ready',flush=True)\n"
              "s.settimeout(8); c,_=s.accept(); c.settimeout(8); n=0\n"
              "while (d:=c.recv(65536)): n+=len(d)\nprint(n,flush=True)\n")
TCP_CLIENT = ("import socket,sys\nc=socket.create_connection((sys.argv[1],5301),timeout=5)\n"
              "c.sendall(b'x'*(1<<20)); c.close()\n")


def test_tcp_across_the_userspace_bridge(lab: Lab, switch: OvsDriver) -> None:
    """TCP needs TX checksum offload off on the nodes' veths (the userspace
    datapath completes no checksums); with it off, a 1 MiB transfer arrives."""
    d = _daemon(lab, {"s": switch})
    a, pa = lab.node("198.18.7.1/24")
    b, pb = lab.node("198.18.7.2/24")
    for ns in (a, b):
        nsx(ns, "ethtool", "-K", "eth0", "tx", "off")
    d.attach("v1", "l1", [PortRef("s", pa), PortRef("s", pb)])
    srv = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", TCP_SERVER],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        nsx(a, sys.executable, "-c", TCP_CLIENT, "198.18.7.2")
        out, _ = srv.communicate(timeout=15)
        assert int(out.strip()) == 1 << 20
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
