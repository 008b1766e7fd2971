"""A VM move between hosts reached over SSH, up to the boundary the lab
cannot cross: the libvirt URIs and ssh program built from an inventory, and
libvirt's peer to peer migration between two daemons (real hosts; the lab
has one libvirtd, tests/e2e/test_vm_ssh_migrate.py runs the one-daemon case):
its flags, typed parameters, destination XML and what it is called with. The
domains are recording stand-ins: a second libvirtd cannot run here."""

from __future__ import annotations

import os
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest
import yaml

from vnetlib import hosts
from vnetlib.vm import migrate, ssh_move
from vnetlib.vm.domain import serial_log

COMMON = ("-o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes "
          "-o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=5")
SOURCE_XML = f"""<domain type='qemu'>
  <name>vn-p1-s1-r1</name>
  <uuid>6f1c2a9e-0d7a-4a57-9b0e-3f5a8c1d2e4b</uuid>
  <memory unit='KiB'>131072</memory>
  <os><type>hvm</type><kernel>/k</kernel><cmdline>console=ttyS0 mtu=1450</cmdline></os>
  <devices>
    <interface type='ethernet'><mac address='52:54:00:00:00:01'/>
      <target dev='vpool0' managed='no'/><model type='virtio'/></interface>
    <interface type='ethernet'><mac address='52:54:00:00:00:02'/>
      <target dev='vpool1' managed='no'/><model type='virtio'/></interface>
    <interface type='ethernet'><mac address='52:54:00:00:00:03'/>
      <target dev='vpool2' managed='no'/><model type='virtio'/></interface>
    <serial type='pty'><log file='{serial_log("vn-p1-s1-r1")}' append='on'/></serial>
  </devices>
</domain>"""


def _inventory(tmp_path: Path, **extra: Any) -> Path:
    d = tmp_path
    ssh = {"ansible_connection": "ansible.builtin.ssh", "ansible_port": 2222,
           "ansible_user": "root", "ansible_ssh_private_key_file": f"{d}/id_ed25519",
           "ansible_ssh_common_args": COMMON.format(d=d), **extra}
    data = {"all": {"children": {"substrate": {"hosts": {
        "h1": {**ssh, "ansible_host": "198.18.10.11"},
        "h2": {**ssh, "ansible_host": "198.18.10.12"},
        "h3": {"ansible_connection": "vnet.infra.netns", "ansible_netns_name": "ns3"},
        "h4": {"ansible_connection": "vnet.infra.netns", "ansible_netns_name": "ns4"},
        "h6": {**ssh, "ansible_host": "2001:db8::6"},
    }}}}}
    path = d / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_libvirt_uri_of_an_ssh_host_pins_its_key_and_known_hosts(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    uri = hosts.libvirt_uri(inv, "h2")
    head, query = uri.split("?", 1)
    assert head == "qemu+ssh://root@198.18.10.12:2222/system"
    params = dict(urllib.parse.parse_qsl(query))
    assert params["keyfile"] == f"{tmp_path}/id_ed25519"
    assert params["no_verify"] == "0" and params["no_tty"] == "1"
    program = Path(params["command"])
    assert program.is_file() and os.access(program, os.X_OK)
    text = program.read_text()
    assert f"UserKnownHostsFile={tmp_path}/known_hosts" in text
    assert "StrictHostKeyChecking=yes" in text and "ControlMaster" not in text
    # The program passes libvirt's own arguments on to ssh unchanged.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "ssh").chmod(0o755)
    out = subprocess.run([str(program), "-p", "2222", "--", "198.18.10.12", "sh -c x"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}).stdout
    args = out.splitlines()
    assert args[-5:] == ["-p", "2222", "--", "198.18.10.12", "sh -c x"]
    assert f"UserKnownHostsFile={tmp_path}/known_hosts" in args[:-5]
    assert hosts.libvirt_uri(inv, "h6").startswith("qemu+ssh://root@[2001:db8::6]:2222/")
    before = program.stat().st_mtime_ns
    hosts.libvirt_uri(inv, "h2")
    assert program.stat().st_mtime_ns == before  # written again only when it changes


def test_no_libvirt_uri_for_a_host_without_host_key_checking(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, ansible_ssh_host_key_checking=False)
    with pytest.raises(ValueError, match="host-key checking"):
        hosts.libvirt_uri(inv, "h1")


def test_the_peer_uri_is_the_hosts_own_unless_the_inventory_names_one(tmp_path: Path) -> None:
    assert hosts.libvirt_peer_uri(_inventory(tmp_path), "h2") == \
        "qemu+ssh://root@198.18.10.12:2222/system"
    tls = "qemu+tls://h2.example/system"
    assert hosts.libvirt_peer_uri(_inventory(tmp_path, vnet_libvirt_peer_uri=tls), "h2") == tls


def test_the_move_goes_over_ssh_only_between_ssh_hosts(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    assert migrate.remote_of(inv, "h3", "h4") is None  # a netns lab: today's local path
    assert migrate.remote_of(inv, "h1", "h2") == migrate.Remote(inv, "h1", "h2")
    with pytest.raises(migrate.MigrationError, match="reached differently"):
        migrate.remote_of(inv, "h1", "h3")


def test_peer_to_peer_flags() -> None:
    flags = ssh_move.p2p_flags()
    for wanted in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER,
                   libvirt.VIR_MIGRATE_PERSIST_DEST, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
                   libvirt.VIR_MIGRATE_ABORT_ON_ERROR):
        assert flags & wanted == wanted
    for unwanted in (libvirt.VIR_MIGRATE_TUNNELLED, libvirt.VIR_MIGRATE_OFFLINE,
                     libvirt.VIR_MIGRATE_PAUSED, libvirt.VIR_MIGRATE_NON_SHARED_DISK,
                     libvirt.VIR_MIGRATE_AUTO_CONVERGE, libvirt.VIR_MIGRATE_POSTCOPY):
        assert flags & unwanted == 0


def _move(inv: Path) -> migrate.VmMove:
    nics = (migrate.Nic("vt1", "vb-l1"), migrate.Nic("vt2", "vb-l2"))
    return migrate.VmMove("vn-p1-s1-r1", "vn-p1-s1-r1+m1", "h1", "h2", nics,
                          "console=ttyS0 mtu=1500", migrate.Remote(inv, "h1", "h2"))


H1_H2 = ("h1", "h2")


def test_peer_to_peer_parameters_and_destination_xml(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    move = _move(inv)
    params = ssh_move.p2p_params(move, migrate.Remote(inv, *H1_H2), SOURCE_XML, SOURCE_XML,
                                 bandwidth_mib=100)
    assert params[libvirt.VIR_MIGRATE_PARAM_DEST_NAME] == "vn-p1-s1-r1+m1"
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://198.18.10.12"
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 100
    dest = ET.fromstring(params[libvirt.VIR_MIGRATE_PARAM_DEST_XML])
    assert dest.findtext("name") == "vn-p1-s1-r1+m1"
    assert dest.findall("uuid")[0].text == "6f1c2a9e-0d7a-4a57-9b0e-3f5a8c1d2e4b"
    assert len(dest.findall("uuid")) == 1
    taps = [t.get("dev") for t in dest.iterfind("devices/interface/target")]
    assert taps == ["vt1", "vt2", migrate.spare_tap("vn-p1-s1-r1+m1", 2)]
    assert [m.get("address") for m in dest.iterfind("devices/interface/mac")] == \
        ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"]
    log = dest.find("devices/serial/log")
    assert log is not None and log.get("file") == serial_log("vn-p1-s1-r1+m1")
    assert "incoming" not in params[libvirt.VIR_MIGRATE_PARAM_DEST_XML]
    persist = ET.fromstring(params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML])
    assert persist.findtext("name") == "vn-p1-s1-r1+m1"
    assert persist.findtext("uuid") == "6f1c2a9e-0d7a-4a57-9b0e-3f5a8c1d2e4b"
    assert persist.findtext("os/cmdline") == "console=ttyS0 mtu=1500"
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH not in ssh_move.p2p_params(
        move, migrate.Remote(inv, *H1_H2), SOURCE_XML, SOURCE_XML)


class _Domain:
    """Records what the mover asks of a source domain."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def XMLDesc(self, flags: int) -> str:
        return _no_nics(SOURCE_XML)

    def migrateSetMaxDowntime(self, ms: int, flags: int) -> None:
        self.calls.append(("downtime", (ms, flags)))

    def migrateToURI3(self, uri: str, params: dict[str, Any], flags: int) -> None:
        self.calls.append(("migrate", (uri, params, flags)))

    def jobStats(self, flags: int) -> dict[str, Any]:
        return {"time_elapsed": 900, "downtime": 12, "setup_time": 3,
                "memory_processed": 70_000_000, "memory_iteration": 2}


def _no_nics(xml: str) -> str:
    root = ET.fromstring(xml)
    devices = root.find("devices")
    assert devices is not None
    for iface in devices.findall("interface"):
        devices.remove(iface)
    return ET.tostring(root, encoding="unicode")


class _Conn:
    def __init__(self, dest: _Domain) -> None:
        self.dest = dest
        self.looked: list[str] = []

    def lookupByName(self, name: str) -> _Domain:
        self.looked.append(name)
        return self.dest


def test_two_daemons_migrate_peer_to_peer_with_downtime_limit_zero(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    move = migrate.VmMove("vn-p1-s1-r1", "vn-p1-s1-r1+m1", "h1", "h2", (), None,
                          migrate.Remote(inv, "h1", "h2"))  # no NICs: no host command
    src, dest = _Domain(), _Domain()
    conn = _Conn(dest)
    stats = ssh_move._peer_to_peer(move, migrate.Remote(inv, *H1_H2), src, conn,
                                   migrate.DOWNTIME_LIMIT_MS, 0.0)
    assert [c[0] for c in src.calls] == ["downtime", "migrate"]
    assert src.calls[0][1] == (0, 0)
    uri, params, flags = src.calls[1][1]
    assert uri == "qemu+ssh://root@198.18.10.12:2222/system"
    assert flags == ssh_move.p2p_flags()
    assert params[libvirt.VIR_MIGRATE_PARAM_DEST_NAME] == move.dest
    assert conn.looked == [move.dest]
    assert (stats.total_ms, stats.downtime_ms, stats.setup_ms, stats.transferred,
            stats.syncs) == (900.0, 12.0, 3.0, 70_000_000, 2)


def test_a_failed_peer_to_peer_migration_names_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = _inventory(tmp_path)
    move = migrate.VmMove("vn-p1-s1-r1", "vn-p1-s1-r1+m1", "h1", "h2", (), None,
                          migrate.Remote(inv, "h1", "h2"))

    class Refusing(_Domain):
        def migrateToURI3(self, uri: str, params: dict[str, Any],
                          flags: int) -> None:
            raise libvirt.libvirtError("unable to connect to server")

    class Gone:
        def lookupByName(self, name: str) -> None:
            raise libvirt.libvirtError(f"no domain {name}")

    on: list[tuple[str, str]] = []

    def on_host(remote: migrate.Remote, host: str, script: str, *, check: bool = True) -> str:
        on.append((host, script))
        return ""

    monkeypatch.setattr(ssh_move, "on_host", on_host)
    with pytest.raises(migrate.MigrationError, match="migration to h2 failed"):
        ssh_move._peer_to_peer(move, migrate.Remote(inv, *H1_H2), Refusing(), Gone(), 0, 0.0)
    # the undo ran on the target: the destination's serial log, its taps looked for
    assert {h for h, _ in on} == {"h2"}
    assert any(serial_log(move.dest) in script for _, script in on)


def test_peer_fdb_entries_change_on_the_host_its_inventory_reaches(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    argv = ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx1", "dst", "198.18.1.12"]
    over = migrate._on(inv, "h1", argv)
    assert over[0] == "ssh" and "root@198.18.10.11" in over
    assert over[-1] == " ".join(argv)
    # a lab host's namespace (not an inventory host), or no inventory: here, in it
    assert migrate._on(inv, "vl-lab-h1", argv) == ["bridge", "-n", "vl-lab-h1", *argv[1:]]
    assert migrate._on(None, "h1", argv) == ["bridge", "-n", "h1", *argv[1:]]
