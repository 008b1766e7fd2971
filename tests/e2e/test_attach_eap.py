"""The EAP methods of end-user attachment: TTLS (inner PAP) and PEAP (inner
MSCHAPv2) end in the VNO's server, inside a TLS tunnel to the device; the
PIP relays records it cannot open. Proven on the wire: every RADIUS packet
between the PIP's authenticator and its proxy is captured in the access
namespace, and none holds the password, the user's name or an EAP method
other than the tunnel's; the VNO still accounts the session to the user. A
device that offers EAP-MD5 to a VNO that did not enable it is rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, Vnet, netns_list, new_lab, ping
from vnetlib import naming
from vnetlib.aaa import radius
from vnetlib.cli.users import accounting
from vnetlib.lab import attach as lab_attach
from vnetlib.lab.players import service_provider

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("freeradius", "hostapd", "wpa_supplicant", "dnsmasq",
                                         "busybox")),
    reason="scripts/install-aaa.sh installs FreeRADIUS, hostapd, wpa_supplicant, dnsmasq",
)

SPEC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="tunnelled">
  <node id="e1"/>
  <attach node="e1" pool="198.19.12.0/24" realm="vno"/>
</vnet>
"""
PASSWORD = "Tunnel-0nly-Secret"
USER = "erin"

# Captures UDP to or from the proxy's ports on the access namespace's loopback,
# one JSON line per packet: [source port, destination port, payload hex].
SNIFF = """
import json, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("lo", 0))
ports = {1812, 1813}
while True:
    frame, meta = s.recvfrom(65535)
    if meta[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\\x08\\x00":
        continue
    ip = frame[14:]
    if ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    sport, dport = struct.unpack("!HH", udp[:4])
    if sport in ports or dport in ports:
        print(json.dumps([sport, dport, udp[8:].hex()]), flush=True)
"""


@dataclass(frozen=True)
class World:
    lab: Lab
    vnet_id: str
    directory: Path

    @property
    def access_ns(self) -> str:
        return naming.access_netns(self.lab.substrate)

    @property
    def device_ns(self) -> str:
        return naming.device_netns(self.lab.substrate, "d1")


@pytest.fixture(scope="module")
def world(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = new_lab(vnet, "--pips", "1", "--hosts", "1", "--attach")
    try:
        spec = tmp_path_factory.mktemp("eap") / "tunnelled.xml"
        spec.write_text(SPEC)
        vnet_id = vnet.json("up", str(spec), "--lab", made.name)["vnet"]
        secret = spec.parent / "pw"
        secret.touch(mode=0o600)
        secret.write_text(PASSWORD + "\n")
        vnet.run("users", "add", f"{USER}@vno", "--password-file", str(secret), "--vnet",
                 vnet_id, "--node", "e1", "--lab", made.name)
        vnet.run("lab", "device", "add", "d1", "--lab", made.name)
        yield World(made, vnet_id, Path(vnet.env["VNET_HOME"]) / "labs" / made.name)
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)
    assert not [n for n in netns_list() if n.startswith(f"vl-{made.name}p1-")]


Packets = list[tuple[int, int, bytes]]


class Capture:
    """A sniffer in the access namespace, started by the fixture."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                                      SNIFF], stdout=subprocess.PIPE, text=True)
        self.got: Packets | None = None

    def packets(self) -> Packets:
        """Stop capturing; the packets seen so far."""
        if self.got is None:
            time.sleep(0.3)
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.got = []
            for line in out.splitlines():
                sport, dport, payload = json.loads(line)
                self.got.append((sport, dport, bytes.fromhex(payload)))
        return self.got


@pytest.fixture
def wire(world: World) -> Iterator[Capture]:
    """The RADIUS packets the PIP's proxy exchanges with the authenticators."""
    capture = Capture(world.access_ns)
    try:
        time.sleep(0.5)  # the socket is bound
        yield capture
    finally:
        capture.packets()
        lab_attach.detach(world.directory, "d1")


def attributes(packet: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 20
    while at + 2 <= len(packet):
        kind, length = packet[at], packet[at + 1]
        if length < 2:
            break
        out.append((kind, packet[at + 2:at + length]))
        at += length
    return out


def eap_types(packets: Packets, codes: tuple[int, ...] = (1, 2)) -> set[int]:
    """The EAP method types of the EAP packets relayed (1: Requests, 2: Responses)."""
    found = set()
    for _, _, p in packets:
        eap = b"".join(v for k, v in attributes(p) if k == 79)
        if len(eap) >= 5 and eap[0] in codes:
            found.add(eap[4])
    return found


def check_tunnelled(world: World, packets: Packets, method: int) -> None:
    auth = [p for p in packets if 1812 in p[:2]]
    assert len(auth) >= 8  # a TLS handshake's worth of round trips
    # Identity, a Nak to the server's first proposal, and the tunnel methods
    # (never MD5, 4, or a bare MSCHAPv2, 26, outside a tunnel)
    assert eap_types(packets) <= {1, 3, 21, 25}
    assert eap_types(packets, codes=(2,)) == {1, 3, method} - ({3} if method == 21 else set())
    for _, _, p in packets:
        assert PASSWORD.encode() not in p
        assert USER.encode() not in p  # neither the name nor anything keyed on it
    names = {v for _, _, p in packets for k, v in attributes(p) if k == 1}
    assert names == {b"anonymous@vno"}
    accept = [p for _, _, p in packets if p[0] == 2]
    assert accept and all(v.startswith(radius.CLASS_PREFIX.encode())
                          for k, v in attributes(accept[-1]) if k == 25)
    for log in ("decisions.log", "log/radius.log"):
        text = (world.directory / "aaa" / "pip1" / log).read_text()
        assert USER not in text and PASSWORD not in text


@pytest.mark.parametrize(("eap", "method"), [("ttls", 21), ("peap", 25)])
def test_tunnelled_methods_hide_the_user_from_the_pip(
        world: World, wire: Capture, eap: str, method: int) -> None:
    got = lab_attach.attach(world.directory, "d1", f"{USER}@vno", PASSWORD, eap=eap)
    assert got.outcome == "connected", got
    assert ping(world.device_ns, "198.19.12.1", count=1)
    lab_attach.detach(world.directory, "d1")
    time.sleep(0.5)  # the Stop's accounting
    sp = service_provider(world.lab.name)
    records = [(r["status"], r["identity"]) for r in accounting(sp)]
    # the VNO turned the opaque Class of the accounting back into its user
    assert ("Start", f"{USER}@vno") in records and ("Stop", f"{USER}@vno") in records
    time.sleep(0.3)
    check_tunnelled(world, wire.packets(), method)
    classes = world.directory / "aaa" / "vno" / radius.CLASSES_DIR
    assert list(classes.iterdir()) == []  # forgotten at the session's Stop


def test_md5_is_refused_unless_the_vno_enabled_it(
        world: World, wire: Capture) -> None:
    got = lab_attach.attach(world.directory, "d1", f"{USER}@vno", PASSWORD, eap="md5")
    assert got.outcome == "rejected", got
    assert not ping(world.device_ns, "198.19.12.1", wait=1)
    sessions = world.directory / "aaa" / "pip1" / "sessions.json"
    assert not sessions.exists() or json.loads(sessions.read_text()) == {}


def test_wrong_password_inside_the_tunnel_is_rejected(
        world: World, wire: Capture) -> None:
    got = lab_attach.attach(world.directory, "d1", f"{USER}@vno", "not-" + PASSWORD)
    assert got.outcome == "rejected", got
    assert not ping(world.device_ns, "198.19.12.1", wait=1)
