"""A revocation reaches the VNO's running RADIUS server without a restart:
a PIP whose certificate is revoked is refused on the connection it already
has open and on a new one (every request is checked against the CA's
current CRL, re-read when the file changes). The TLS handshake itself
refuses it once the listener re-reads its CA directory (every
`radius.CRL_RELOAD` seconds, FreeRADIUS's least being 300: not waited for
here) and at every start (`test_aaa.test_only_pip_certificates_reach_the_vno`)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from vnetlib.aaa import daemons, radius
from vnetlib.aaa.users import free_port
from vnetlib.players.pki import LabCA, Role

pytestmark = pytest.mark.skipif(
    shutil.which("freeradius") is None or shutil.which("radclient") is None,
    reason="scripts/install-aaa.sh")


def _acct(port: int, user: str) -> None:
    subprocess.run(["radclient", "-t", "2", "-r", "1", f"127.0.0.1:{port}", "acct", "s3cret"],
                   input=f"User-Name = {user}@vno, Acct-Status-Type = Start, "
                         f"NAS-Identifier = p-{user}, Acct-Session-Id = {user}\n",
                   capture_output=True, text=True, timeout=20, check=False)


def _logged(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


def _handshake(port: int, key: Path, cert: Path) -> bool:
    """A RadSec client's TLS handshake with the server's listener."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.settimeout(1.0)  # TLS 1.2: a refused client certificate ends the handshake
            try:
                tls.recv(1)
            except TimeoutError:
                return True
            return False
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def test_a_revoked_pip_is_refused_without_restarting_the_server(tmp_path: Path) -> None:
    ca = LabCA.create(tmp_path / "ca", "test CA")
    creds = {name: ca.export(name, role, tmp_path / "creds" / name)
             for name, role in (("vno", Role.VNO), ("pip1", Role.PIP))}
    for name in creds:
        ca.copy_crl(tmp_path / "creds" / name)

    def tls(name: str) -> radius.Tls:
        c = creds[name]
        return radius.Tls(str(c.key_path), str(c.cert_path), str(c.ca_path),
                          str(tmp_path / "creds" / name / "crl.pem"))

    started: list[Path] = []
    try:
        port = free_port("127.0.0.1")
        server = radius.ServerConfig(tmp_path / "vno", ("127.0.0.1",), port, tls("vno"))
        radius.write(server.directory, radius.server_conf(server), "vno-radius", tls("vno"))
        (server.directory / "users.pl").write_text(
            radius.users_pl(server.directory / "u.json", tls("vno").crl))
        server_pid = _start(started, server.directory, "vno-radius")
        pport = free_port("127.0.0.1")
        while pport + 1 == port:
            pport = free_port("127.0.0.1")
        home = radius.HomeServer("vno", "127.0.0.1", port, name="vno")
        proxy = radius.ProxyConfig(tmp_path / "pip1", pport, "s3cret", (home,), tls("pip1"), 2)
        radius.write(proxy.directory, radius.proxy_conf(proxy), "pip-radius", tls("pip1"))
        _start(started, proxy.directory, "pip-radius")
        log = server.directory / radius.ACCOUNTING_LOG
        pip1 = creds["pip1"]

        _acct(pport + 1, "before")
        assert _logged(log) == ["before@vno"]
        assert _handshake(port, pip1.key_path, pip1.cert_path)

        ca.revoke("pip1")
        for name in creds:
            ca.copy_crl(tmp_path / "creds" / name)
        # the proxy's RadSec connection is still open: its next request is refused
        _acct(pport + 1, "after")
        assert _logged(log) == ["before@vno"]
        # a new connection too (its handshake passes until the listener reloads)
        assert _handshake(port, pip1.key_path, pip1.cert_path)
        aport = free_port("127.0.0.1")
        while aport + 1 in (port, pport, pport + 1):
            aport = free_port("127.0.0.1")
        again = radius.ProxyConfig(tmp_path / "pip1b", aport, "s3cret", (home,), tls("pip1"), 2)
        radius.write(again.directory, radius.proxy_conf(again), "pip-radius", tls("pip1"))
        _start(started, again.directory, "pip-radius")
        _acct(aport + 1, "fresh")
        assert _logged(log) == ["before@vno"]
        assert daemons.running(server.directory / "run" / "vno-radius.daemon.pid",
                               str(server.directory)) == server_pid  # never restarted
    finally:
        for directory in started:
            for pidfile in (directory / "run").glob("*.daemon.pid"):
                daemons.stop(pidfile, str(directory))


def _start(started: list[Path], d: Path, name: str) -> int:
    started.append(d)
    return daemons.start(["freeradius", "-f", "-d", str(d), "-n", name],
                         pidfile=d / "run" / f"{name}.daemon.pid", log=d / "log" / "out",
                         marker=str(d), settle=0.5)


def test_requests_at_once_on_a_fresh_server_all_pass(tmp_path: Path) -> None:
    """Each server thread's perl reads the CRL on its first request, with an
    openssl child, and requests arriving together must all pass the check.
    (A bench run of 20 TTLS devices saw 4 first requests refused as "Invalid
    user" while close()'s status on that child counted; ignoring it, 30 of 30
    passed. This test did not reproduce that race with the old check: it
    guards the outcome, not that cause.)"""
    ca = LabCA.create(tmp_path / "ca", "test CA")
    creds = {name: ca.export(name, role, tmp_path / "creds" / name)
             for name, role in (("vno", Role.VNO), ("pip1", Role.PIP))}
    for name in creds:
        ca.copy_crl(tmp_path / "creds" / name)

    def tls(name: str) -> radius.Tls:
        c = creds[name]
        return radius.Tls(str(c.key_path), str(c.cert_path), str(c.ca_path),
                          str(tmp_path / "creds" / name / "crl.pem"))

    started: list[Path] = []
    try:
        port = free_port("127.0.0.1")
        server = radius.ServerConfig(tmp_path / "vno", ("127.0.0.1",), port, tls("vno"))
        radius.write(server.directory, radius.server_conf(server), "vno-radius", tls("vno"))
        (server.directory / "users.pl").write_text(
            radius.users_pl(server.directory / "u.json", tls("vno").crl))
        _start(started, server.directory, "vno-radius")
        pport = free_port("127.0.0.1")
        while pport + 1 == port:
            pport = free_port("127.0.0.1")
        home = radius.HomeServer("vno", "127.0.0.1", port, name="vno")
        proxy = radius.ProxyConfig(tmp_path / "pip1", pport, "s3cret", (home,), tls("pip1"), 3)
        radius.write(proxy.directory, radius.proxy_conf(proxy), "pip-radius", tls("pip1"))
        _start(started, proxy.directory, "pip-radius")
        records = "\n".join(f"User-Name = u{i}@vno, Acct-Status-Type = Start, "
                            f"NAS-Identifier = p-{i}, Acct-Session-Id = s{i}\n"
                            for i in range(48))
        subprocess.run(["radclient", "-p", "48", "-t", "4", "-r", "1",
                        f"127.0.0.1:{pport + 1}", "acct", "s3cret"], input=records,
                       capture_output=True, text=True, timeout=60, check=False)
        got = _logged(server.directory / radius.ACCOUNTING_LOG)
        assert sorted(got) == sorted(f"u{i}@vno" for i in range(48))
    finally:
        for directory in started:
            for pidfile in (directory / "run").glob("*.daemon.pid"):
                daemons.stop(pidfile, str(directory))
