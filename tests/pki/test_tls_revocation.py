"""Revocation and renewal over real mutual TLS on 127.0.0.1: a running server
refuses a client revoked after it started, a client refuses a revoked server,
renewed certificates work, and a player is never started on the CA's key."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from vnetlib.players.client import PlayerClient, TransportError
from vnetlib.players.config import PlayerConfig, Upstream, VnoSection, dump
from vnetlib.players.pki import Credentials, LabCA, Role
from vnetlib.players.server import Service, ServiceServer


@dataclass
class Lab:
    ca: LabCA
    root: Path

    def dir(self, name: str) -> Path:
        return self.root / "creds" / name

    def creds(self, name: str, role: Role) -> Credentials:
        return self.ca.export(name, role, self.dir(name))

    def publish_crl(self, *names: str) -> None:
        for name in names:
            self.ca.copy_crl(self.dir(name))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(LabCA.create(tmp_path / "ca", "tls test lab"), tmp_path)


@pytest.fixture
def server(lab: Lab) -> Iterator[ServiceServer]:
    srv = ServiceServer(Service("pip1"), lab.creds("pip1", Role.PIP), timeout=3.0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def whoami(client: PlayerClient) -> str:
    reply = client.get("/v1/whoami")
    assert reply.status == 200
    return str(etree.fromstring(reply.body).get("name"))


def served_serial(srv: ServiceServer, creds: Credentials) -> int:
    """The serial of the certificate the server presents right now."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as raw, \
            creds.client_context().wrap_socket(raw, server_hostname=srv.host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(creds: Credentials) -> int:
    return x509.load_pem_x509_certificate(creds.cert_path.read_bytes()).serial_number


def test_a_running_server_refuses_a_client_revoked_after_it_started(
        lab: Lab, server: ServiceServer) -> None:
    vno1 = PlayerClient(server.url, lab.creds("vno1", Role.VNO), 5.0)
    vno2 = PlayerClient(server.url, lab.creds("vno2", Role.VNO), 5.0)
    assert whoami(vno1) == "vno1"

    revoked = lab.ca.revoke("vno1", "key_compromise")
    assert revoked == [serial_of(Credentials(lab.dir("vno1") / "vno1.pem", Path(), Path()))]
    lab.publish_crl("pip1")  # the lab hands the new CRL to the server only

    # The server's handshake refuses it (in TLS 1.3 the client learns of it
    # only as a closed connection); the only change was the server's CRL.
    with pytest.raises(TransportError):
        whoami(vno1)
    assert whoami(vno2) == "vno2"  # the same running server, still serving others


def test_a_client_refuses_a_server_revoked_after_the_client_was_made(
        lab: Lab, server: ServiceServer) -> None:
    client = PlayerClient(server.url, lab.creds("vno1", Role.VNO), 5.0)
    assert whoami(client) == "vno1"

    lab.ca.revoke("pip1")
    lab.publish_crl("vno1")

    with pytest.raises(TransportError, match="revoked"):
        whoami(client)


def test_renewed_certificates_work_and_a_running_server_serves_its_new_one(
        lab: Lab, server: ServiceServer) -> None:
    client_creds = lab.creds("vno1", Role.VNO)
    old_client = serial_of(client_creds)
    old_server = served_serial(server, client_creds)

    lab.ca.renew("vno1")
    renewed = lab.creds("vno1", Role.VNO)
    assert serial_of(renewed) != old_client
    assert whoami(PlayerClient(server.url, renewed, 5.0)) == "vno1"

    lab.ca.renew("pip1")
    new_server = serial_of(lab.creds("pip1", Role.PIP))
    assert new_server != old_server
    assert served_serial(server, renewed) == new_server  # no restart

    # With the old server certificate revoked, the renewed one still passes.
    assert lab.ca.revoke(old_server, "superseded") == [old_server]
    lab.publish_crl("vno1", "pip1")
    assert whoami(PlayerClient(server.url, renewed, 5.0, expect_name="pip1")) == "vno1"


def test_vnet_serve_refuses_a_config_whose_pki_holds_the_ca_key(
        lab: Lab, tmp_path: Path) -> None:
    config = PlayerConfig(name="vno1", role=Role.VNO, store=f"sqlite:///{tmp_path / 'vno.db'}",
                          pki=lab.ca.directory,
                          vno=VnoSection(vnp=Upstream("vnp", "https://127.0.0.1:9")))
    path = tmp_path / "vno.toml"
    path.write_text(dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "vnetlib.cli.main", "serve", "--role", "vno", "--config",
         str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert str(lab.ca.directory / "ca.key") in proc.stderr
    assert "must not hold the CA key" in proc.stderr
