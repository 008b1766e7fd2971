"""vnetlib.vm.libvirtd: start libvirt's daemons, see them run, stop only what was started.

Needs root and libvirt (scripts/install-libvirt.sh). If libvirtd already runs
(another test's, or the machine's), the test stops nothing it did not start.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vnetlib.vm import libvirtd

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not libvirtd.available(),
    reason="needs root and libvirt (scripts/install-libvirt.sh)",
)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_start_detect_stop(tmp_path: Path) -> None:
    already = {d.name for d in libvirtd.DAEMONS if libvirtd.answers(d)}
    daemons = libvirtd.Daemons(tmp_path / "a")
    try:
        started = daemons.start()
        assert set(started) == {d.name for d in libvirtd.DAEMONS} - already
        assert libvirtd.running()
        for name, pid in started.items():
            assert (tmp_path / "a" / f"{name}.pid").read_text().strip() == str(pid)
            assert Path(os.readlink(f"/proc/{pid}/exe")).name == name

        # A second starter finds both running and starts nothing, so stops nothing.
        other = libvirtd.Daemons(tmp_path / "b")
        assert other.start() == {}
        other.stop()
        assert libvirtd.running()
        for pid in started.values():
            assert Path(f"/proc/{pid}").exists()
    finally:
        pids = daemons.started
        daemons.stop()
    for pid in pids.values():
        assert _gone(pid), f"pid {pid} still runs after stop()"
    assert daemons.started == {}
    for daemon in libvirtd.DAEMONS:
        assert libvirtd.answers(daemon) == (daemon.name in already)


def test_context_manager_serves_qemu_uri(tmp_path: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    with libvirtd.Daemons(tmp_path) as daemons:
        conn = libvirt.open("qemu:///system")
        try:
            assert conn.getType() == "QEMU"
        finally:
            conn.close()
        pids = daemons.started
    for pid in pids.values():
        assert _gone(pid)


def test_start_fails_naming_a_missing_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if libvirtd.running():
        pytest.skip("libvirt's daemons already run: start() would not look for them")
    monkeypatch.setattr(
        libvirtd, "DAEMONS", (libvirtd.Daemon("vnet-no-such-daemon", tmp_path / "s"),)
    )
    with pytest.raises(libvirtd.LibvirtdError, match="vnet-no-such-daemon is not installed"):
        libvirtd.Daemons(tmp_path).start()
