"""Figure 6 on lab substrates with each encapsulation of their crossing links,
one lab for all three (`vnet lab up --pips 3 --encap vxlan,click,vlan
--switch ssh`: PIP i's substrate carries its links with the i-th; the VLAN
PIP's switch is programmed over SSH, its host key pinned in the substrate
description), made once for this module.

The operator path (`vnet plan`, ansible-playbook) shows check mode, the
diff, idempotence and a teardown that leaves the hosts and the switch as
they were; `vnet up` / `vnet down` (the direct path through the PIP core)
deploys two VNets with the same address plan on the same hosts, every link
pings both ways in each, broadcasts, double-tagged frames and forged tunnel
ids stay in their VNet, and a link taken down in one does not reach the
other's node holding the same address. Click shapes bandwidth and latency;
a Click VNet keeps pinging without loss while another is deployed and
removed on the same hosts. Last, the carrier of a host missing (Open
vSwitch stopped, the switch's sshd stopped, Click unable to start): `vnet
up` fails with exit 4 naming the host or the switch, rolls back and records
nothing; with the carrier back, the same request deploys; a switch that
shows another host key than the description pins is refused."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, links_in, netns_list, new_lab, ping
from tests.e2e.test_operator_path import playbook
from vnetlib.lab import sshd
from vnetlib.spec import load_vnet
from vnetlib.switch import daemons
from vnetlib.switch import lab as switch_lab

FIGURE6 = EXAMPLES / "figure6.xml"
ENCAPS = ("vxlan", "click", "vlan")
LAB_ARGS = ("--pips", "3", "--no-players", "--encap", ",".join(ENCAPS), "--switch", "ssh")
CLICK_RUNDIR = Path("/run/vnet/click")


@dataclass(frozen=True, slots=True)
class On:
    """One encapsulation's substrate of the module's lab."""

    encap: str
    lab: Lab
    substrate: str


@pytest.fixture(scope="module")
def three(vnet: Vnet) -> Iterator[Lab]:
    made = new_lab(vnet, *LAB_ARGS)
    switch = switch_lab.ssh_files(f"{made.name}p{ENCAPS.index('vlan') + 1}")
    try:
        yield made
    finally:
        front = sshd.running(switch, switch_lab.SWITCH_HOST)
        vnet.run("lab", "down", "--name", made.name, check=False)
    assert front is not None, "the VLAN switch's sshd was not running at the end"
    try:
        state = Path(f"/proc/{front}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = ""
    assert state in ("", "Z"), "lab down left the switch's sshd running"  # Z: not reaped yet


@pytest.fixture(params=ENCAPS)
def on(request: pytest.FixtureRequest, three: Lab) -> On:
    encap = str(request.param)
    return On(encap, three, f"{three.name}p{ENCAPS.index(encap) + 1}")


def hosts_of(substrate: str) -> list[str]:
    return sorted(n for n in netns_list() if n.startswith(f"vl-{substrate}-h"))


def devices(substrate: str) -> dict[str, set[str]]:
    """Every interface of the substrate's hosts and its switch."""
    names = [*hosts_of(substrate), f"vl-{substrate}-switch"]
    return {ns: links_in(ns) for ns in names}


def vxlan_devices(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "vxlan"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()]


def click_pids(substrate: str) -> dict[str, int]:
    """The running Click process of each substrate host that has one."""
    out = {}
    for ns in hosts_of(substrate):
        # one process per VNet (the role's default) or one per host
        for pidfile in [*CLICK_RUNDIR.glob(f"{ns}/*/click.pid"), CLICK_RUNDIR / ns / "click.pid"]:
            if pidfile.exists():
                pid = int(pidfile.read_text())
                if Path(f"/proc/{pid}").exists():
                    out[ns] = pid
    return out


def ovs_ports(vnet: Vnet, substrate: str) -> dict[str, int | None]:
    """Port -> VLAN tag on the substrate switch's Open vSwitch bridge."""
    inventory = yaml.safe_load((Path(vnet.env["VNET_HOME"]) / "substrates" / substrate
                                / "inventory.yml").read_text())
    db = inventory["all"]["vars"]["vnet_ovs_db"]
    bridge = inventory["all"]["vars"]["vnet_ovs_bridge"]
    out = subprocess.run(["ovs-vsctl", f"--db={db}", "--format=json", "--columns=name,tag",
                          "list", "Port"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)["data"]
    return {r[0]: (r[1] if isinstance(r[1], int) else None) for r in rows if r[0] != bridge}


def crossing(plan: dict[str, Any]) -> set[str]:
    return {t["link"] for h in plan["hosts"].values() for t in h["links"]
            if t["tunnel"] is not None} | {c["link"] for h in plan["hosts"].values()
                                           for c in h["click"] + h["vlan"]}


def every_link_pings(substrate: str, vnet_id: str) -> None:
    for link in load_vnet(FIGURE6).links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            assert ping(f"vn-{substrate}-{vnet_id}-{src.node}", peer, count=2, wait=2), \
                f"{link.id}: {src.node} cannot reach {dst.node} ({peer})"


def test_plan_check_apply_idempotent_remove(vnet: Vnet, on: On, tmp_path: Path) -> None:
    encap, env, substrate = on.encap, vnet.env, on.substrate
    inventory = Path(env["VNET_HOME"]) / "substrates" / substrate / "inventory.yml"
    before = devices(substrate)
    ports_before = ovs_ports(vnet, substrate) if encap == "vlan" else {}

    plan_file = tmp_path / "plan.yml"
    made = vnet.json("plan", str(FIGURE6), "--substrate", substrate, "-o", str(plan_file))
    vnet_id = made["vnet"]
    plan = yaml.safe_load(plan_file.read_text())["vnet_plan"]
    links = crossing(plan)
    assert links, "Figure 6 should cross hosts on this lab"
    for host in plan["hosts"].values():
        carried = {"vxlan": [t["link"] for t in host["links"] if t["tunnel"]],
                   "click": [c["link"] for c in host["click"]],
                   "vlan": [v["link"] for v in host["vlan"]]}
        assert all(not v for k, v in carried.items() if k != encap), carried

    if encap == "vlan":  # the substrate description's switch, over SSH
        switches = [h["switch"] for h in plan["hosts"].values() if h["vlan"]]
        assert switches and all(s["driver"] == "ssh" and s["switch_host_key"]
                                for s in switches), switches
    check = playbook(env, inventory, "-e", f"@{plan_file}", "--check", "--diff", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "failed=0" in check.stdout
    if encap == "vlan":  # check mode reports the switch's changes, makes none
        assert f"--- before: vs-{substrate} (running)" in check.stdout, check.stdout[-3000:]
        assert check.stdout.count('"mode": "access"') == 2 * len(links), check.stdout[-3000:]
        assert ovs_ports(vnet, substrate) == ports_before
    assert devices(substrate) == before and not click_pids(substrate)
    assert not {n for n in netns_list() if n.startswith(f"vn-{substrate}-{vnet_id}-")}

    applied = playbook(env, inventory, "-e", f"@{plan_file}", "--diff", cwd=tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    every_link_pings(substrate, vnet_id)
    hosts = hosts_of(substrate)
    tunnels = [d for ns in hosts for d in vxlan_devices(ns)]
    if encap == "vxlan":
        assert len(tunnels) == 2 * len(links)
    else:
        assert tunnels == [], f"{encap}: kernel VXLAN devices {tunnels}"
    if encap == "click":
        used = {f"vl-{substrate}-{h}" for h, p in plan["hosts"].items() if p["click"]}
        assert set(click_pids(substrate)) == used
    if encap == "vlan":
        tags = {p: t for p, t in ovs_ports(vnet, substrate).items() if p not in ports_before}
        assert len(tags) == 2 * len(links)  # one access port per host end
        assert len(set(tags.values())) == len(links)  # one VLAN per link
        assert all(t is not None and 2 <= t <= 4093 for t in tags.values())

    again = playbook(env, inventory, "-e", f"@{plan_file}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    recap = again.stdout[again.stdout.rindex("PLAY RECAP"):]
    assert "changed=1" not in recap and all(
        "changed=0" in line for line in recap.splitlines()[1:] if "ok=" in line), recap

    gone = playbook(env, inventory, "-e", f"@{plan_file}", "-e", "vnet_state=absent",
                    cwd=tmp_path)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert devices(substrate) == before
    assert not click_pids(substrate)
    assert not [p for p in CLICK_RUNDIR.glob(f"vl-{substrate}-*")] if CLICK_RUNDIR.exists() \
        else True
    if encap == "vlan":
        assert ovs_ports(vnet, substrate) == ports_before
    assert not {n for n in netns_list() if n.startswith(f"vn-{substrate}-{vnet_id}-")}


SEND = """
import socket, struct, sys
dev, kind, tag = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
src = s.getsockname()[4]
bcast = b"\\xff" * 6
payload = b"vnet-isolation".ljust(46, b"\\0")
if kind == "broadcast":
    frame = bcast + src + b"\\x88\\xb5" + payload
elif kind == "double-tagged":
    vlan = struct.pack("!H", tag & 0xFFF)
    frame = bcast + src + b"\\x81\\x00" + vlan + b"\\x81\\x00" + vlan + b"\\x88\\xb5" + payload
else:  # a VXLAN packet with another VNet's id, as a node would forge it
    vx = struct.pack("!II", 0x08000000, tag << 8) + bcast + src + b"\\x88\\xb5" + payload
    udp = struct.pack("!HHHH", 40000, 4789, 8 + len(vx), 0) + vx
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([198, 18, 1, 11]), bytes([198, 18, 1, 12]))
    frame = bcast + src + b"\\x08\\x00" + ip + udp
for _ in range(100):
    s.send(frame)
"""


def rx_packets(netns: str, dev: str, way: str = "rx") -> int:
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"][way]["packets"])


def link_id(vnet: Vnet, vnet_id: str, link: str) -> int:
    """The tunnel id (VXLAN, Click) or VLAN id of `link` in the VNet's plan."""
    plan = vnet.json("status", vnet_id)["plan"]
    for host in plan["hosts"].values():
        for t in host["links"]:
            if t["link"] == link and t["tunnel"]:
                return int(t["tunnel"]["vni"])
        for c in host["click"]:
            if c["link"] == link:
                return int(c["vni"])
        for v in host["vlan"]:
            if v["link"] == link:
                return int(v["vlan"])
    return 4095  # l1 did not cross hosts: any id


def test_two_vnets_same_addresses_ping_isolated_down(vnet: Vnet, on: On) -> None:
    encap, substrate = on.encap, on.substrate
    before = devices(substrate)
    a = vnet.json("up", str(FIGURE6), "--substrate", substrate)["vnet"]
    b = vnet.json("up", str(FIGURE6), "--substrate", substrate)["vnet"]
    try:
        every_link_pings(substrate, a)
        every_link_pings(substrate, b)
        l1 = load_vnet(FIGURE6).link("l1")
        sender = f"vn-{substrate}-{a}-{l1.a.node}"
        their_sender = f"vn-{substrate}-{b}-{l1.a.node}"
        mine, theirs = (f"vn-{substrate}-{v}-{l1.b.node}" for v in (a, b))
        dev, far = l1.a.interface.name, l1.b.interface.name
        other = link_id(vnet, b, "l1")
        for kind in ("broadcast", "double-tagged", "forged-id"):
            # what the other VNet's own node sent meanwhile (IPv6 router
            # solicitations, MLD of a VNet just made) is its own traffic, not a leak
            counted = (rx_packets(mine, far), rx_packets(theirs, far),
                       rx_packets(their_sender, dev, "tx"))
            subprocess.run(["ip", "netns", "exec", sender, sys.executable, "-c", SEND, dev, kind,
                            str(other)], check=True, capture_output=True)
            time.sleep(0.5)
            got_mine = rx_packets(mine, far) - counted[0]
            got_theirs = (rx_packets(theirs, far) - counted[1]
                          - (rx_packets(their_sender, dev, "tx") - counted[2]))
            # 100 frames are sent: a leak shows as ~100; a few are the other
            # VNet's own IPv6 chatter (its bridge and host ends' solicitations, MLD)
            assert got_theirs < 20, f"{encap} {kind}: {got_theirs} frames reached the other VNet"
            if kind == "broadcast":
                assert got_mine >= 95, f"{encap}: the link lost its own broadcasts ({got_mine})"
        # r1's end of l1 down in VNet a: a's e1 no longer reaches 198.19.0.2,
        # which b's r1 holds on the same hosts, carried the same way.
        subprocess.run(["ip", "-n", f"vn-{substrate}-{a}-r1", "link", "set", far, "down"],
                       check=True)
        assert not ping(f"vn-{substrate}-{a}-e1", "198.19.0.2", count=3, wait=1), encap
        assert ping(f"vn-{substrate}-{b}-e1", "198.19.0.2")
        vnet.run("down", a)
        every_link_pings(substrate, b)  # the other VNet's links are untouched
    finally:
        vnet.run("down", a, check=False)
        vnet.run("down", b, check=False)
    assert devices(substrate) == before
    assert not click_pids(substrate)


SHAPED = """<vnet xmlns="urn:vnet:rdl:1" version="1" name="shaped">
  <node id="a" kind="netns" cpu="3" memory="64"/>
  <node id="b" kind="netns" cpu="3" memory="64"/>
  <link id="s1" bandwidth="{rate}" latency="{latency}">
    <endpoint node="a" interface="eth0"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="b" interface="eth0"><address>198.19.0.2/30</address></endpoint>
  </link>
</vnet>
"""


def iperf_mbps(client: str, server: str, dst: str, seconds: float) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in subprocess.run(["ip", "netns", "exec", server, "ss", "-ltn"],
                                         capture_output=True, text=True).stdout:
                break
            time.sleep(0.1)
        out = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", dst, "-p", "5201",
                              "-t", str(seconds), "-J"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()


def click_on(three: Lab) -> str:
    return f"{three.name}p{ENCAPS.index('click') + 1}"


def test_click_links_get_the_spec_bandwidth_and_latency(vnet: Vnet, three: Lab,
                                                        tmp_path: Path) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is missing: scripts/install-click.sh installs it")
    substrate = click_on(three)
    rate, latency = 20.0, 10.0
    spec = tmp_path / "shaped.xml"
    spec.write_text(SHAPED.format(rate=rate, latency=latency))
    made = vnet.json("up", str(spec), "--substrate", substrate)
    try:
        assert made["node_map"]["a"] != made["node_map"]["b"]
        a, b = (f"vn-{substrate}-{made['vnet']}-{x}" for x in "ab")
        out = subprocess.run(["ip", "netns", "exec", a, "ping", "-n", "-c", "5", "-i", "0.2",
                              "198.19.0.2"], capture_output=True, text=True).stdout
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        assert len(rtts) == 5 and min(rtts) >= 2 * latency, rtts  # 10 ms each way
        # goodput of full frames at MTU 1450 with TCP timestamps: 1398 of 1464 bytes
        expect = rate * 1398 / 1464
        got = iperf_mbps(a, b, "198.19.0.2", 4.0)
        assert abs(got - expect) / expect < 0.05, (got, expect)
    finally:
        vnet.run("down", made["vnet"], check=False)


def test_a_click_vnet_pings_without_loss_while_another_comes_and_goes(
        vnet: Vnet, three: Lab, tmp_path: Path) -> None:
    """VNet 1 pings every 10 ms over Click across two hosts while Figure 6 is
    deployed and removed on the same hosts through the plan and the role:
    no reply is missing (the tail still in flight when the ping stops is
    not a loss)."""
    substrate = click_on(three)
    spec = tmp_path / "one.xml"
    spec.write_text(SHAPED.format(rate=100, latency=1))
    one = vnet.json("up", str(spec), "--substrate", substrate)
    pinger: subprocess.Popen[str] | None = None
    try:
        a = f"vn-{substrate}-{one['vnet']}-a"
        assert one["node_map"]["a"] != one["node_map"]["b"]
        assert ping(a, "198.19.0.2")
        pinger = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-n", "-i", "0.01",
                                   "198.19.0.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        two = vnet.json("up", str(FIGURE6), "--substrate", substrate)
        assert set(two["node_map"].values()) >= set(one["node_map"].values())
        vnet.run("down", two["vnet"])
        time.sleep(0.5)
        pinger.send_signal(2)
        out, _ = pinger.communicate(timeout=10)
        seqs = {int(n) for n in re.findall(r"icmp_seq=(\d+) ", out)}
        assert len(seqs) > 200, out[-300:]
        missing = sorted(set(range(1, max(seqs) + 1)) - seqs)
        assert not missing, f"{len(missing)} of {max(seqs)} replies missing: {missing[:20]}"
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
            pinger.wait()
        vnet.run("down", one["vnet"], check=False)


# -- the carrier missing on a host (last: they stop the lab's switch) ----------------


def failed_up(vnet: Vnet, substrate: str) -> str:
    done = vnet.run("up", str(FIGURE6), "--substrate", substrate, check=False)
    assert done.returncode == 4, done.stdout + done.stderr
    assert not [v for v in vnet.json("status") if v["status"] == "ready"]
    return done.stderr


def _offset(vnet: Vnet, lab: Lab) -> str:
    """The management offset the lab was made with (an up with another is refused)."""
    saved = json.loads((Path(vnet.env["VNET_HOME"]) / "labs" / lab.name / "lab.json")
                       .read_text())
    return str(saved["mgmt_offset"])


def switch_address(vnet: Vnet, substrate: str) -> str:
    text = (Path(vnet.env["VNET_HOME"]) / "substrates" / substrate / "substrate.xml").read_text()
    match = re.search(r'<control driver="ssh"[^>]* address="([0-9.]+)"', text)
    assert match is not None, text
    return match.group(1)


def test_a_switch_with_another_host_key_is_refused(vnet: Vnet, three: Lab,
                                                   tmp_path: Path) -> None:
    substrate = f"{three.name}p{ENCAPS.index('vlan') + 1}"
    described = Path(vnet.env["VNET_HOME"]) / "substrates" / substrate / "substrate.xml"
    original = described.read_text()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    other = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    pinned = re.search(r"<host-key>([^<]+)</host-key>", original)
    assert pinned is not None
    try:
        before = devices(substrate)
        ports = ovs_ports(vnet, substrate)
        described.write_text(original.replace(pinned.group(1), other))
        err = failed_up(vnet, substrate)
        assert f"switch {switch_address(vnet, substrate)}:22" in err, err
        assert re.search(r"(?i)host key|known_hosts", err), err
        assert devices(substrate) == before and ovs_ports(vnet, substrate) == ports
    finally:
        described.write_text(original)


@pytest.mark.parametrize("encap", ["click", "vlan", "sshd"])
def test_missing_carrier_fails_naming_the_host_and_rolls_back(vnet: Vnet, three: Lab,
                                                              encap: str) -> None:
    """``sshd``: the VLAN switch's sshd stopped (the deployment has made the
    hosts' nodes and links when it reaches the switch): fails naming the
    switch, rolls back, and the lab's up starts the sshd again."""
    substrate = f"{three.name}p{ENCAPS.index('vlan' if encap == 'sshd' else encap) + 1}"
    blocker: list[Path] = []
    try:
        before = devices(substrate)
        if encap == "vlan":
            directory = Path(vnet.env["VNET_HOME"]) / "labs" / three.name
            assert daemons.stop(switch_lab.instances(directory)[substrate])
            # the switch answers SSH, its ovs-vsctl cannot reach the database
            named = re.compile(r"\bh[0-9]\b.*switch [0-9.]+:22: ovs-vsctl")
        elif encap == "sshd":
            assert sshd.stop(switch_lab.ssh_files(substrate))
            assert vnet.run("lab", "status", "--name", three.name, check=False).returncode == 1
            named = re.compile(rf"\bh[0-9]\b.*switch {switch_address(vnet, substrate)}:22: "
                               r".*(Unable to connect|refused)")
        else:
            # the state directory of h2's Click instance cannot be made
            CLICK_RUNDIR.mkdir(parents=True, exist_ok=True)
            path = CLICK_RUNDIR / f"vl-{substrate}-h2"
            path.write_text("not a directory\n")
            blocker.append(path)
            named = re.compile(r"\bh2\b")
        # a stopped vswitchd takes its datapath's tap ports with it
        stopped = devices(substrate)
        err = failed_up(vnet, substrate)
        assert named.search(err) and (encap != "click" or "Click" in err), err
        assert devices(substrate) == stopped

        if encap in ("vlan", "sshd"):
            vnet.run("lab", "up", "--name", three.name, *LAB_ARGS,
                     "--mgmt-offset", _offset(vnet, three))
        else:
            blocker.pop().unlink()
        if encap == "sshd":  # up again; the deployment with the carrier back is vlan's
            assert sshd.running(switch_lab.ssh_files(substrate), switch_lab.SWITCH_HOST)
            assert vnet.run("lab", "status", "--name", three.name, check=False).returncode == 0
            return
        vnet_id = vnet.json("up", str(FIGURE6), "--substrate", substrate)["vnet"]
        every_link_pings(substrate, vnet_id)
        vnet.run("down", vnet_id)
        assert devices(substrate) == before and not click_pids(substrate)
    finally:
        for path in blocker:
            path.unlink(missing_ok=True)
