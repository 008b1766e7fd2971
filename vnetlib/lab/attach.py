"""End-user attachment in the lab (Interface 6): the VNO's RADIUS server, each
PIP's access switch (a namespace `vl-<substrate>-+access` on the PIP's
management network, with the PIP's RADIUS proxy, the access controller and one
802.1X authenticator per access port) and end-user devices (a namespace
`vl-<substrate>-+dev-<name>` whose `eth0` is plugged into access port
`p-<name>`, with wpa_supplicant and udhcpc).

Everything lives under `<lab>/aaa/` and in namespaces and root links carrying
the substrate's prefix, so `vnet lab down` removes it with the rest.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import netaddr

from vnetlib import naming
from vnetlib.aaa import access, daemons, radius, users
from vnetlib.lab import exchange, kernel
from vnetlib.lab.layout import LabConfig
from vnetlib.lab.players import VNO_NAME, credentials_dir, load_players, pip_name
from vnetlib.players.config import load as load_config
from vnetlib.players.pki import CA_CERT, CRL_FILE, PLAYER_URI_PREFIX

DEVICE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
ACCESS_OFFSET = 5  # the access switch's address on a PIP's management network
UPLINK_IF = "mgmt0"
DHCP_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    ;;
  deconfig)
    ip addr flush dev "$interface"
    ;;
esac
"""


class AttachError(RuntimeError):
    pass


def aaa_root(directory: Path) -> Path:
    return directory / "aaa"


def tls_of(directory: Path, player: str) -> radius.Tls:
    creds = credentials_dir(directory, player)
    crl = creds / CRL_FILE
    return radius.Tls(str(creds / f"{player}.key"), str(creds / f"{player}.pem"),
                      str(creds / CA_CERT), str(crl) if crl.exists() else "")


def device_port(device: str) -> str:
    return f"p-{device}"


def _access(directory: Path, index: int, substrate: str) -> access.Access:
    d = aaa_root(directory) / pip_name(index)
    secret_file = d / "secret"
    if not secret_file.exists():
        daemons.private_dir(d)
        daemons.write_private(secret_file, secrets.token_hex(16))
    pip = load_players(directory).get(pip_name(index))
    store = f"sqlite:///{directory / 'stores' / f'{pip_name(index)}.db'}"
    if pip is not None:
        store = load_config(Path(pip.config)).store
    return access.Access(d, naming.access_netns(substrate), substrate, store,
                         secret_file.read_text().strip())


# -- up and down ------------------------------------------------------------------------


def eap_methods() -> tuple[str, ...]:
    """The EAP methods the lab's VNO accepts: `$VNET_EAP_METHODS` (blank or
    comma separated, e.g. `ttls,peap,md5`), else TTLS and PEAP. MD5 only when
    listed: the PIP would see its challenge and response."""
    text = os.environ.get("VNET_EAP_METHODS", "").replace(",", " ").split()
    return tuple(text) or radius.DEFAULT_METHODS


def up(directory: Path, substrates: list[LabConfig]) -> list[str]:
    """The VNO's server, then every PIP's access switch; idempotent."""
    created: list[str] = []
    daemons.private_dir(aaa_root(directory))
    vno_dir = aaa_root(directory) / VNO_NAME
    had = daemons.running(vno_dir / "run" / "server.pid", str(vno_dir)) is not None
    port = users.start_server(vno_dir, tls_of(directory, VNO_NAME),
                              tuple(sub.mgmt_gateway for sub in substrates),
                              methods=eap_methods())
    if not had:
        created.append(f"RADIUS server of {VNO_NAME} on port {port}")
    for i, sub in enumerate(substrates, start=1):
        acc = _access(directory, i, sub.name)
        changes = kernel.Changes()
        kernel.ensure_netns(acc.netns, changes)
        uplink = f"{naming.root_link_prefix(sub.name)}acc"
        kernel.ensure_veth(None, uplink, acc.netns, UPLINK_IF, changes)
        with kernel.namespace(None) as root:
            bridge = kernel.link_index(root, naming.mgmt_bridge(sub.name))
            kernel.attach_up(root, uplink, bridge)
        net = netaddr.IPNetwork(sub.mgmt_network)
        with kernel.namespace(acc.netns) as ns:
            idx = kernel.attach_up(ns, UPLINK_IF, None)
            kernel.ensure_addr(ns, idx, str(net.network + ACCESS_OFFSET), net.prefixlen)
        # on the PIP's data network too, for tunnels to other PIPs' segments (roaming)
        sw_ns = naming.switch_netns(sub.name)
        kernel.ensure_veth(acc.netns, access.DATA_IF, sw_ns, "acc", changes)
        with kernel.namespace(sw_ns) as sw:
            kernel.attach_up(sw, "acc", kernel.link_index(sw, kernel.SWITCH_BRIDGE))
        data = netaddr.IPNetwork(sub.data_network)
        with kernel.namespace(acc.netns) as ns:
            idx = kernel.attach_up(ns, access.DATA_IF, None)
            kernel.ensure_addr(ns, idx, str(data.network + ACCESS_OFFSET), data.prefixlen)
            exchange.ensure_route(ns, exchange.DATA_RANGE, sub.data_gateway)
        created += changes.created
        acc = replace(acc, peers=tuple(aaa_root(directory) / pip_name(j)
                                       for j in range(1, len(substrates) + 1) if j != i))
        home = radius.HomeServer(VNO_NAME, sub.mgmt_gateway, port, name=VNO_NAME)
        tls = tls_of(directory, pip_name(i))
        if daemons.running(acc.pidfile("proxy"), str(acc.directory)) is None:
            access.start_proxy(acc, (home,), tls)
            created.append(f"RADIUS proxy of {pip_name(i)}")
        if daemons.running(acc.pidfile("controller"), str(acc.directory)) is None:
            access.start_controller(acc)
            created.append(f"access controller of {pip_name(i)}")
        for record in devices(directory).values():
            if record.pip == i:
                access.start_port(acc, record.port)
    if start_rotation(directory):
        created.append("log rotation of the AAA daemons")
    return created


def _rotation_pidfile(directory: Path) -> Path:
    return aaa_root(directory) / "run" / "logs.pid"


def _rotation_marker(directory: Path) -> str:
    """Its command line's own words (every AAA daemon's names a path under the root)."""
    return f"vnetlib.aaa.logs\0--dir\0{aaa_root(directory)}\0"


def start_rotation(directory: Path) -> bool:
    """The rotator of every AAA log of the lab (`vnetlib.aaa.logs`); True if
    it was started now."""
    root = aaa_root(directory)
    pidfile = _rotation_pidfile(directory)
    if daemons.running(pidfile, _rotation_marker(directory)) is not None:
        return False
    daemons.private_dir(root / "run")
    daemons.start([sys.executable, "-m", "vnetlib.aaa.logs", "--dir", str(root)],
                  pidfile=pidfile, log=root / "run" / "logs.out",
                  marker=_rotation_marker(directory), settle=0.0)
    return True


def down(directory: Path) -> list[str]:
    """Stop every daemon of the lab's attachment (namespaces go with the lab)."""
    stopped: list[str] = []
    root = aaa_root(directory)
    if not root.is_dir():
        return stopped
    for record in devices(directory).values():
        if _stop_supplicant(directory, record):
            stopped.append(f"wpa_supplicant of {record.name}")
    if daemons.stop(_rotation_pidfile(directory), _rotation_marker(directory)):
        stopped.append("log rotation")
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "run"):
        run = d / "run"
        for pidfile in sorted(run.glob("*.pid")) if run.is_dir() else []:
            marker = _marker(d, pidfile)
            if daemons.stop(pidfile, marker):
                stopped.append(f"{pidfile.stem} of {d.name}")
    return stopped


def _marker(d: Path, pidfile: Path) -> str:
    stem = pidfile.stem
    if stem.startswith("hostapd-"):
        return str(d / "ports" / f"{stem[len('hostapd-'):]}.conf")
    if stem.startswith("dnsmasq-"):
        return str(d / "run" / f"{stem}.leases")
    return str(d)


# -- devices ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    pip: int
    substrate: str
    netns: str
    port: str
    mac: str


def _devices_dir(directory: Path) -> Path:
    return aaa_root(directory) / "devices"


def devices(directory: Path) -> dict[str, Device]:
    d = _devices_dir(directory)
    if not d.is_dir():
        return {}
    return {p.stem: Device(**json.loads(p.read_text())) for p in sorted(d.glob("*.json"))}


def device(directory: Path, name: str) -> Device:
    found = devices(directory).get(name)
    if found is None:
        raise LookupError(f"no device {name!r} in this lab; add it with `vnet lab device add`")
    return found


def add_device(directory: Path, substrates: list[LabConfig], name: str, pip: int = 1) -> Device:
    """A device namespace plugged into a new access port of PIP `pip`."""
    if not DEVICE_RE.match(name):
        raise ValueError(f"device name {name!r}: 1 to 8 lower-case letters or digits")
    if not 1 <= pip <= len(substrates):
        raise ValueError(f"the lab has PIPs 1 to {len(substrates)}, not {pip}")
    existing = devices(directory).get(name)
    if existing is not None:
        return existing
    sub = substrates[pip - 1]
    acc = _access(directory, pip, sub.name)
    ns, port = naming.device_netns(sub.name, name), device_port(name)
    changes = kernel.Changes()
    kernel.ensure_netns(ns, changes)
    kernel.ensure_veth(acc.netns, port, ns, "eth0", changes)
    with kernel.namespace(acc.netns) as sw:
        kernel.attach_up(sw, port, None)
    with kernel.namespace(ns) as dev:
        idx = kernel.attach_up(dev, "eth0", None)
        mac = str(dev.get_links(idx)[0].get_attr("IFLA_ADDRESS"))
    access.start_port(acc, port)
    record = Device(name, pip, sub.name, ns, port, mac)
    path = _devices_dir(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record), indent=1))
    return record


def remove_device(directory: Path, substrates: list[LabConfig], name: str) -> None:
    record = device(directory, name)
    _stop_supplicant(directory, record)
    acc = _access(directory, record.pip, record.substrate)
    access.stop_port(acc, record.port)
    subprocess.run(["ip", "netns", "delete", record.netns], check=False,
                   capture_output=True)
    with kernel.namespace(acc.netns) as sw:
        idx = kernel.link_index(sw, record.port)
        if idx is not None:
            sw.link("del", index=idx)
    (_devices_dir(directory) / f"{name}.json").unlink(missing_ok=True)


# -- attaching --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    device: str
    identity: str
    outcome: str  # connected, rejected, no-address
    address: str | None
    seconds: float  # from starting the supplicant to an address (or the rejection)
    detail: str = ""
    authorized_after: float | None = None  # seconds to the port's authorization


def _supplicant_dir(directory: Path, record: Device) -> Path:
    return _devices_dir(directory) / record.name


EAP_METHODS = ("ttls", "peap", "md5")


def _wpa_conf(identity: str, password: str, ctrl: Path, eap: str = "ttls",
              ca: Path | None = None) -> str:
    """wpa_supplicant's network block. TTLS (inner PAP) and PEAP (inner
    MSCHAPv2) check the server's certificate against `ca` and its player URI
    (the realm's VNO), and show the PIP only `anonymous@realm`."""
    for value in (identity, password, str(ca or "")):
        if any(c in value for c in '"\\\n'):
            raise ValueError("identities and passwords cannot hold quotes, backslashes or "
                             "line breaks")
    if eap not in EAP_METHODS:
        raise ValueError(f"EAP method {eap!r}: one of {', '.join(EAP_METHODS)}")
    lines = [f"ctrl_interface={ctrl}", "ap_scan=0", "network={", "    key_mgmt=IEEE8021X",
             f"    eap={eap.upper()}", f'    identity="{identity}"',
             f'    password="{password}"', "    eapol_flags=0"]
    if eap != "md5":
        if ca is None:
            raise ValueError(f"EAP-{eap.upper()} needs the CA of the realm's server")
        realm = identity.rpartition("@")[2]
        lines += [f'    anonymous_identity="anonymous@{realm}"', f'    ca_cert="{ca}"',
                  f'    altsubject_match="URI:{PLAYER_URI_PREFIX}{realm}"',
                  '    phase2="auth=PAP"' if eap == "ttls" else '    phase2="auth=MSCHAPV2"']
        if eap == "peap":
            lines.append('    phase1="peapver=0"')
    return "\n".join([*lines, "}", ""])


def _stop_supplicant(directory: Path, record: Device) -> bool:
    d = _supplicant_dir(directory, record)
    return daemons.stop(d / "wpa.pid", str(d / "wpa.conf"))


class _WpaControl:
    """wpa_supplicant's control socket, spoken to directly: a status poll
    every 50 ms per device through `wpa_cli` forked 20 processes a second
    per device, which at 200 devices was the bench's own load."""

    def __init__(self, d: Path) -> None:
        self.target = d / "ctrl" / "eth0"
        self.local = d / f"c{threading.get_native_id()}"
        self.sock: socket.socket | None = None

    def request(self, command: str, timeout: float = 2.0) -> str | None:
        """The reply, or None while the supplicant has no socket yet."""
        try:
            if self.sock is None:
                self.local.unlink(missing_ok=True)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(str(self.local))
                try:
                    sock.connect(str(self.target))
                except OSError:
                    sock.close()
                    self.local.unlink(missing_ok=True)
                    return None
                self.sock = sock
            self.sock.settimeout(timeout)
            self.sock.send(command.encode())
            while True:
                reply = self.sock.recv(16384).decode(errors="replace")
                if not reply.startswith("<"):  # not an unsolicited event
                    return reply
        except OSError:
            self.close()
            return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.local.unlink(missing_ok=True)


def _quick_start(wpa: _WpaControl, timeout: float = 5.0) -> None:
    """EAPOL-Start every second instead of every 30 (a start sent while the
    authenticator still forgets the device's last session is lost), and never
    give up on an authenticator (after maxStart starts a supplicant assumes a
    port without 802.1X and calls itself authorized)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (wpa.request("SET EAPOL::startPeriod 1") or "").strip() == "OK":
            wpa.request("SET EAPOL::maxStart 1000")
            return
        time.sleep(0.02)
    raise AttachError("wpa_supplicant does not answer on its control socket")


def _wpa_status(wpa: _WpaControl) -> dict[str, str]:
    out = wpa.request("STATUS") or ""
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _dhcp_script(directory: Path) -> Path:
    script = aaa_root(directory) / "udhcpc.sh"
    if not script.exists() or script.read_text() != DHCP_SCRIPT:
        tmp = script.with_name(f".udhcpc.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(DHCP_SCRIPT)
        tmp.chmod(0o755)
        tmp.replace(script)  # devices attaching at once never run a half-written one
    return script


def attach(directory: Path, name: str, identity: str, password: str,
           timeout: float = 20.0, eap: str = "ttls") -> Attachment:
    """Authenticate the device's port with 802.1X and, once the PIP connected it,
    take an address by DHCP. A rejection stops the supplicant (no retry loop).
    `eap`: ttls (default), peap, or md5 (only where the VNO allows it)."""
    record = device(directory, name)
    d = _supplicant_dir(directory, record)
    daemons.private_dir(d)
    _stop_supplicant(directory, record)
    subprocess.run(["ip", "netns", "exec", record.netns, "ip", "addr", "flush", "dev", "eth0"],
                   check=False, capture_output=True)
    conf = d / "wpa.conf"
    daemons.write_private(conf, _wpa_conf(identity, password, d / "ctrl", eap,
                                          credentials_dir(directory, VNO_NAME) / CA_CERT))
    start = time.monotonic()
    daemons.start(["wpa_supplicant", "-D", "wired", "-i", "eth0", "-c", str(conf)],
                  pidfile=d / "wpa.pid", log=d / "wpa.log", marker=str(conf),
                  netns=record.netns, settle=0.0)
    wpa = _WpaControl(d)
    try:
        _quick_start(wpa)
        deadline = start + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            status = _wpa_status(wpa)
            if status.get("suppPortStatus") == "Authorized":
                break
            if (status.get("EAP state") == "FAILURE"
                    or status.get("Supplicant PAE state") == "HELD"):
                _stop_supplicant(directory, record)
                return Attachment(name, identity, "rejected", None, time.monotonic() - start,
                                  "the authentication failed")
            time.sleep(0.05)
        else:
            _stop_supplicant(directory, record)
            return Attachment(name, identity, "rejected", None, time.monotonic() - start,
                              f"no decision within {timeout:.0f} s")
    finally:
        wpa.close()
    authorized = time.monotonic() - start
    script = _dhcp_script(directory)
    left = max(2, int(deadline - time.monotonic()))
    dhcp = subprocess.run(
        ["ip", "netns", "exec", record.netns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q",
         "-n", "-t", str(left * 2), "-T", "1", "-A", "1", "-s", str(script)],
        capture_output=True, text=True, check=False, timeout=left * 3 + 5)
    address = device_address(record)
    outcome = "connected" if address else "no-address"
    return Attachment(name, identity, outcome, address, time.monotonic() - start,
                      "" if address else (dhcp.stdout + dhcp.stderr)[-500:], authorized)


def device_address(record: Device) -> str | None:
    with kernel.namespace(record.netns) as dev:
        idx = kernel.link_index(dev, "eth0")
        if idx is None:
            return None
        for a in dev.get_addr(index=idx, family=2):
            return f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
    return None


def detach(directory: Path, name: str, timeout: float = 10.0) -> bool:
    """Log the device off (EAPOL-Logoff) and wait until the PIP took its port out
    of the VNet; True if it was attached."""
    record = device(directory, name)
    d = _supplicant_dir(directory, record)
    was = record.port in access.sessions(aaa_root(directory) / pip_name(record.pip))
    if daemons.running(d / "wpa.pid", str(d / "wpa.conf")) is not None:
        subprocess.run(["wpa_cli", "-p", str(d / "ctrl"), "-i", "eth0", "logoff"],
                       capture_output=True, check=False, timeout=5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.port not in access.sessions(aaa_root(directory) / pip_name(record.pip)):
            break
        time.sleep(0.05)
    else:
        raise AttachError(f"the PIP did not disconnect {name} within {timeout:.0f} s")
    _stop_supplicant(directory, record)
    subprocess.run(["ip", "netns", "exec", record.netns, "ip", "addr", "flush", "dev", "eth0"],
                   check=False, capture_output=True)
    return was


def attached(directory: Path) -> list[dict[str, object]]:
    """Every port in a VNet now, from every PIP's access controller."""
    out: list[dict[str, object]] = []
    root = aaa_root(directory)
    by_port = {d.port: d.name for d in devices(directory).values()}
    for d in sorted(root.glob("pip*")) if root.is_dir() else []:
        for port, s in access.sessions(d).items():
            out.append({**s, "pip": d.name, "port": port, "device": by_port.get(port),
                        "mac": s.get("device")})
    return out
