"""Size-capped AAA logs: the rotator copies a log past its cap to NAME.1 and
truncates it in place; a running FreeRADIUS (its linelog accounting, its
main log) goes on writing into the emptied file, and the VNO's accounting
view still returns every record, the rotated ones first."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_aaa_crl import _acct, _start
from vnetlib.aaa import daemons, logs, radius
from vnetlib.aaa.users import accounting, free_port
from vnetlib.players.pki import LabCA, Role


def test_rotation_keeps_an_appending_writer_going(tmp_path: Path) -> None:
    path = tmp_path / "d.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"x" * 100 + b"\n")
        assert not logs.rotate(path, 200)
        os.write(fd, b"y" * 150 + b"\n")
        assert logs.rotate(path, 200)
        assert path.stat().st_size == 0 and logs.rotated(path).stat().st_size == 252
        assert logs.rotated(path).stat().st_mode & 0o777 == 0o600
        os.write(fd, b"z\n")  # the same descriptor, at the start of the emptied file
        assert path.read_bytes() == b"z\n"
        assert logs.lines_with_rotated(path) == ["x" * 100, "y" * 150, "z"]
    finally:
        os.close(fd)


def test_the_rotator_process_caps_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    big = tmp_path / "pip1" / "log" / "radius.log"
    big.parent.mkdir(parents=True)
    big.write_text("line\n" * 100)
    small = tmp_path / "pip1" / "decisions.log"
    small.write_text("line\n")
    proc = subprocess.Popen([sys.executable, "-m", "vnetlib.aaa.logs", "--dir", str(tmp_path),
                             "--cap", "100", "--every", "0.1"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while big.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert big.stat().st_size == 0 and logs.rotated(big).stat().st_size == 500
        assert small.read_text() == "line\n" and not logs.rotated(small).exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


@pytest.mark.skipif(shutil.which("freeradius") is None or shutil.which("radclient") is None,
                    reason="scripts/install-aaa.sh")
def test_freeradius_writes_on_after_rotation_and_accounting_sees_all(tmp_path: Path) -> None:
    ca = LabCA.create(tmp_path / "ca", "test CA")
    creds = {name: ca.export(name, role, tmp_path / "creds" / name)
             for name, role in (("vno", Role.VNO), ("pip1", Role.PIP))}

    def tls(name: str) -> radius.Tls:
        c = creds[name]
        return radius.Tls(str(c.key_path), str(c.cert_path), str(c.ca_path))

    started: list[Path] = []
    try:
        port = free_port("127.0.0.1")
        server = radius.ServerConfig(tmp_path / "vno", ("127.0.0.1",), port, tls("vno"))
        radius.write(server.directory, radius.server_conf(server), "vno-radius", tls("vno"))
        (server.directory / "users.pl").write_text(radius.users_pl(server.directory / "u.json"))
        pid = _start(started, server.directory, "vno-radius")
        pport = free_port("127.0.0.1")
        while pport + 1 == port:
            pport = free_port("127.0.0.1")
        home = radius.HomeServer("vno", "127.0.0.1", port, name="vno")
        proxy = radius.ProxyConfig(tmp_path / "pip1", pport, "s3cret", (home,), tls("pip1"), 2)
        radius.write(proxy.directory, radius.proxy_conf(proxy), "pip-radius", tls("pip1"))
        _start(started, proxy.directory, "pip-radius")
        log = server.directory / radius.ACCOUNTING_LOG

        _acct(pport + 1, "first")
        assert [r["identity"] for r in accounting(server.directory)] == ["first@vno"]
        rotated = logs.rotate_all(tmp_path, cap=10, accounting_cap=10)
        assert log in rotated and server.directory / "log" / "radius.log" in rotated
        _acct(pport + 1, "second")
        assert log.read_text().split()[1] == "second@vno"  # the server wrote on, in place
        assert logs.rotated(log).read_text().split()[1] == "first@vno"
        assert [r["identity"] for r in accounting(server.directory)] == [
            "first@vno", "second@vno"]
        # a second rotation drops the oldest copy
        logs.rotate_all(tmp_path, cap=10, accounting_cap=10)
        _acct(pport + 1, "third")
        assert [r["identity"] for r in accounting(server.directory)] == [
            "second@vno", "third@vno"]
        assert daemons.running(server.directory / "run" / "vno-radius.daemon.pid",
                               str(server.directory)) == pid
    finally:
        for directory in started:
            for pidfile in (directory / "run").glob("*.daemon.pid"):
                daemons.stop(pidfile, str(directory))
