"""The VNO's SSH front door: a real `ssh` client (openssh-client) logs in with
a key the SP registered over the API and lands on a node's console through
the real chain VNO -> VNP -> PIP -> a confined shell in the node."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from tests.integration.test_console_chain import SMALL
from vnetlib.cli.keys import add_key, list_keys, remove_key
from vnetlib.console.sshd import SshFrontDoor, load_host_key, target_of
from vnetlib.players.client import RemoteError
from vnetlib.players.config import Upstream, VnoSection
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet

TENANT_UIDS = range(200000, 300000)


@dataclass
class Door:
    players: Players
    door: SshFrontDoor
    vnet: str
    sp: ServiceProvider
    sp2: ServiceProvider
    dir: Path

    def key(self, name: str) -> Path:
        path = self.dir / name
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                            "-f", str(path)], check=True)
        return path

    def ssh(self, key: Path, user: str, stdin: bytes = b"", *command: str,
            tty: bool = True, opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        known = self.dir / "known_hosts"
        known.write_text(self.door.known_hosts_line() + "\n")
        cmd = ["ssh", "-F", "/dev/null", "-p", str(self.door.port), "-i", str(key),
               "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
               "-o", "ConnectTimeout=10", *(["-tt"] if tty else []), *opts,
               f"{user}@127.0.0.1", *command]
        return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60)


def uids_in(text: bytes) -> list[int]:
    return [int(w) for w in text.split() if w.isdigit() and int(w) in TENANT_UIDS]


@pytest.fixture(scope="module")
def door(lab_ca: LabCA, substrates: Substrates,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client (scripts/install.sh installs openssh-client)")
    root = tmp_path_factory.mktemp("ssh")
    players = Players(lab_ca, root)
    try:
        players.pip("pip-a", substrates.a)
        players.vnp("vnp", ["pip-a"])
        up = Upstream("vnp", players.nodes["vnp"].url)
        node = players.start(players.config("vno", Role.VNO, vno=VnoSection(
            vnp=up, ssh_listen="127.0.0.1:0")))
        assert node.ssh is not None
        sp = ServiceProvider(node.url, players.creds("sp", Role.SP), 300.0, vno_name="vno")
        sp2 = ServiceProvider(node.url, players.creds("sp2", Role.SP), 300.0, vno_name="vno")
        view = sp.request_vnet(parse_vnet(SMALL))
        assert view.status == "ready"
        yield Door(players, node.ssh, view.id, sp, sp2, root)
        sp.delete(view.id)
    finally:
        players.stop_all()
        for ns in namespaces(f"vn-{substrates.a}-"):
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_registered_key_lands_on_the_node_shell(door: Door) -> None:
    key = door.key("sp-key")
    name, fingerprint, _ = add_key(door.sp, "laptop", key.with_suffix(".pub").read_text())
    assert name == "laptop" and fingerprint.startswith("SHA256:")
    out = door.ssh(key, f"{door.vnet}.n1", b"id -u\nexit\n")
    assert out.returncode == 0, out.stderr
    assert uids_in(out.stdout), out.stdout
    # the same shell as `vnet console`, set up through the chain as the SP would
    rows = door.players.nodes["vno"].console.sessions.rows()
    mine = [r for r in rows if r["peer"] and r["peer"].startswith("ssh ")]
    assert mine and mine[-1]["owner"] == "sp:sp" and fingerprint in mine[-1]["peer"]
    assert mine[-1]["next_hop"] == door.players.nodes["vnp"].console.url
    assert mine[-1]["closed"] is not None
    vnp_rows = str(door.players.nodes["vnp"].console.sessions.rows())
    assert "vno:vno" in vnp_rows and "ssh" not in vnp_rows
    # the node kind may be named, and piped input without a pty works as well
    out = door.ssh(key, f"{door.vnet}.n2.shell", b"echo hi-$((40+2))\nexit\n", tty=False)
    assert out.returncode == 0 and b"hi-42" in out.stdout, out


def test_unregistered_key_is_refused(door: Door) -> None:
    out = door.ssh(door.key("stranger"), f"{door.vnet}.n1", b"id -u\nexit\n")
    assert out.returncode == 255
    assert b"Permission denied (publickey)" in out.stderr
    assert not uids_in(out.stdout)


def test_another_sps_vnet_is_refused_like_a_missing_one(door: Door) -> None:
    key = door.key("sp2-key")
    add_key(door.sp2, "k", key.with_suffix(".pub").read_text())
    theirs = door.ssh(key, f"{door.vnet}.n1", b"id -u\nexit\n")
    missing = door.ssh(key, "v0000000000.n1", b"id -u\nexit\n")
    assert theirs.returncode == missing.returncode == 1
    assert not uids_in(theirs.stdout)
    assert f"no VNet {door.vnet}".encode() in theirs.stderr, theirs.stderr
    # nothing tells the other SP's VNet from one that does not exist
    assert (theirs.stderr.replace(door.vnet.encode(), b"X")
            == missing.stderr.replace(b"v0000000000", b"X"))
    assert b"sp:sp" not in theirs.stderr + theirs.stdout


def test_exec_and_bad_user_names_are_refused(door: Door) -> None:
    key = door.key("sp-key")
    add_key(door.sp, "laptop", key.with_suffix(".pub").read_text())
    out = door.ssh(key, f"{door.vnet}.n1", b"", "id", "-u", tty=False)
    assert out.returncode == 2 and b"a command is not offered here" in out.stderr
    out = door.ssh(key, door.vnet, b"exit\n")
    assert out.returncode == 2 and b"log in as VNET.NODE" in out.stderr
    remote = door.ssh(key, f"{door.vnet}.n1", b"id -u\nexit\n",
                      opts=("-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22"))
    assert remote.returncode == 255 and b"forwarding failed" in remote.stderr, remote
    listener = door.players.nodes["vno"].console.url.removeprefix("tls://")
    direct = door.ssh(key, f"{door.vnet}.n1", b"", tty=False, opts=("-W", listener))
    assert direct.returncode == 255 and b"open failed" in direct.stderr, direct


def test_removed_key_is_refused_afterwards(door: Door) -> None:
    key = door.key("temp-key")
    add_key(door.sp, "temp", key.with_suffix(".pub").read_text())
    assert door.ssh(key, f"{door.vnet}.n1", b"id -u\nexit\n").returncode == 0
    remove_key(door.sp, "temp")
    out = door.ssh(key, f"{door.vnet}.n1", b"id -u\nexit\n")
    assert out.returncode == 255 and b"Permission denied (publickey)" in out.stderr
    assert "temp" not in [n for n, _, _ in list_keys(door.sp)]


def test_keys_api_is_per_sp(door: Door) -> None:
    key = door.key("api-key").with_suffix(".pub").read_text()
    assert door.sp.client.put("/v1/keys/api", _doc(key)).status == 201
    assert door.sp.client.put("/v1/keys/api", _doc(key)).status == 200  # replaced
    listed = {n: line for n, _, line in list_keys(door.sp)}
    assert listed["api"].startswith("ssh-ed25519 AAAA") and listed["api"].endswith("api-key")
    assert "api" not in [n for n, _, _ in list_keys(door.sp2)]
    with pytest.raises(RemoteError) as dup:  # one key, one SP
        door.sp2.client.put("/v1/keys/mine", _doc(key))
    assert dup.value.status == 409
    with pytest.raises(RemoteError) as bad:
        door.sp.client.put("/v1/keys/bad", _doc("ssh-ed25519 AAAAnotakey x"))
    assert bad.value.status == 422
    with pytest.raises(RemoteError) as gone:
        door.sp2.client.delete("/v1/keys/api")  # not theirs
    assert gone.value.status == 404
    remove_key(door.sp, "api")


def _doc(line: str) -> bytes:
    return f"<ssh-key>{line.strip()}</ssh-key>".encode()


def test_host_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vno-ssh_host_ed25519_key"
    first = load_host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_host_key(path)
    assert first.export_public_key() == again.export_public_key()


def test_user_names() -> None:
    assert target_of("v1.n1") == target_of("v1.n1.shell")
    assert target_of("v1.n1.serial").kind == "serial"
    assert target_of("v1.a.b").node == "a.b"
    for bad in ("v1", "v1.", ".n1", ""):
        with pytest.raises(ValueError):
            target_of(bad)
