"""The host shell scripts of a VM move between hosts reached over SSH
(`vnetlib.vm.ssh_move`), run for real by `sh` in a namespace standing for
the target host, with the daemon's QEMU in the root namespace (this test
process's pid file stands for it), as in the SSH lab: the taps are made in
the root namespace, moved into the host's and onto its bridge after the
start, and an undo deletes them wherever they are. Without a pid file (a
host that runs its own libvirtd) they are made and attached in the host's
namespace."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vnetlib.vm import ssh_move
from vnetlib.vm.migrate import Nic


@pytest.fixture
def host() -> Iterator[str]:
    name = f"vt-mv-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "vbmv", "type", "bridge"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def taps() -> Iterator[tuple[str, str]]:
    made = (f"vtm{secrets.token_hex(3)}", f"vsm{secrets.token_hex(3)}")
    yield made
    for tap in made:  # in the root namespace if a step failed half-way
        subprocess.run(["ip", "link", "delete", "dev", tap], capture_output=True, check=False)


def _sh(netns: str, script: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def _taps(netns: str | None) -> dict[str, dict[str, Any]]:
    shown = subprocess.run(["ip", *(["-n", netns] if netns else []), "-json", "link", "show",
                            "type", "tun"], capture_output=True, text=True, check=True).stdout
    return {e["ifname"]: e for e in json.loads(shown or "[]")}


def test_taps_made_in_the_daemons_namespace_then_moved_onto_the_hosts_bridge(
        host: str, taps: tuple[str, str], tmp_path: Path) -> None:
    tap, spare = taps
    pid_file = tmp_path / "qemu.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    nics = [Nic(tap, "vbmv")]

    _sh(host, ssh_move.make_script([tap, spare], str(pid_file)))
    assert {tap, spare} <= set(_taps(None)) and not _taps(host)
    _sh(host, ssh_move.make_script([tap, spare], str(pid_file)))  # again: nothing new

    _sh(host, ssh_move.attach_script(nics, [spare], str(pid_file)))
    there = _taps(host)
    assert not {tap, spare} & set(_taps(None))
    assert there[tap].get("master") == "vbmv" and "UP" in there[tap]["flags"]
    assert there[spare].get("master") is None and "UP" not in there[spare]["flags"]

    # an undo from half-way: one tap in each namespace
    subprocess.run(["ip", "-n", host, "link", "set", "dev", spare, "netns", str(os.getpid())],
                   check=True)
    _sh(host, ssh_move.delete_script([tap, spare], str(pid_file)))
    assert not {tap, spare} & (set(_taps(None)) | set(_taps(host)))


def test_a_host_with_its_own_daemon_keeps_the_taps_in_its_namespace(
        host: str, taps: tuple[str, str]) -> None:
    tap, spare = taps
    _sh(host, ssh_move.make_script([tap, spare], None) + "; "
        + ssh_move.attach_script([Nic(tap, "vbmv")], [spare], None))
    assert _taps(host)[tap].get("master") == "vbmv"
    assert not {tap, spare} & set(_taps(None))
    _sh(host, ssh_move.delete_script([tap, spare]))
    assert not {tap, spare} & set(_taps(host))
