"""Kept-alive connections between players, on real sockets and mutual TLS:
calls reuse one connection, the server closes idle ones on its header bound
and the client then reconnects by itself, an error answer closes the
connection, and a server revoked since the handshake is refused on reuse."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from cryptography import x509

from tests.integration.conftest import DemoService
from vnetlib.players import client as player_client
from vnetlib.players.client import PlayerClient, RemoteError, TransportError
from vnetlib.players.pki import Credentials, LabCA, Role
from vnetlib.players.server import Limits, ServiceServer


def wait_for(check: Callable[[], bool], within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_calls_share_one_connection_until_it_idles_out(
        creds: dict[str, Credentials]) -> None:
    player_client.close_idle_connections()
    with ServiceServer(DemoService(), creds["pip1"]) as srv:
        client = PlayerClient(srv.url, creds["vno1"], 5, expect_name="pip1")
        other = PlayerClient(srv.url, creds["vno1"], 5)  # same credentials: same pool
        start = time.perf_counter()
        assert client.get("/v1/whoami").status == 200
        first = time.perf_counter() - start
        times = []
        for c in (client, other, client, other):
            start = time.perf_counter()
            assert c.get("/v1/whoami").status == 200
            times.append(time.perf_counter() - start)
        assert srv.open_connections == 1  # one kept-alive connection served them all
        print(f"\nfirst call {first * 1000:.2f} ms (handshake), kept-alive calls "
              f"{min(times) * 1000:.2f}-{max(times) * 1000:.2f} ms")
        # an idle connection is closed by the client's pool after POOL_IDLE
        assert wait_for(lambda: srv.open_connections == 0, player_client.POOL_IDLE + 2)


def test_server_closes_idle_connections_and_the_client_reconnects(
        creds: dict[str, Credentials]) -> None:
    player_client.close_idle_connections()
    limits = Limits(header_timeout=0.3)
    with ServiceServer(DemoService(), creds["pip1"], limits=limits) as srv:
        client = PlayerClient(srv.url, creds["vno1"], 5)
        assert client.get("/v1/whoami").status == 200
        assert srv.open_connections == 1
        # no next request within the header bound: the server closes it
        assert wait_for(lambda: srv.open_connections == 0, 2.0)
        assert client.get("/v1/whoami").status == 200  # on a fresh connection
        assert srv.open_connections == 1


def test_an_error_answer_closes_the_connection(creds: dict[str, Credentials]) -> None:
    player_client.close_idle_connections()
    with ServiceServer(DemoService(), creds["pip1"]) as srv:
        client = PlayerClient(srv.url, creds["vno1"], 5)
        with pytest.raises(RemoteError) as missing:
            client.get("/v1/vnets/nope")
        assert missing.value.status == 404
        assert wait_for(lambda: srv.open_connections == 0, 2.0)


def test_a_server_revoked_since_the_handshake_is_refused_on_reuse(
        lab_ca: LabCA, creds: dict[str, Credentials]) -> None:
    player_client.close_idle_connections()
    server_creds = lab_ca.issue("pip-keepalive", Role.PIP)
    with ServiceServer(DemoService(), server_creds) as srv:
        client = PlayerClient(srv.url, creds["vno1"], 5)
        assert client.get("/v1/whoami").status == 200
        assert srv.open_connections == 1
        lab_ca.revoke("pip-keepalive")
        with pytest.raises(TransportError) as refused:
            client.get("/v1/whoami")
        assert "revoked" in str(refused.value) or "certificate" in str(refused.value)


def test_a_renewed_client_presents_its_new_certificate(
        lab_ca: LabCA, creds: dict[str, Credentials]) -> None:
    """The client's context is cached per process, but not past a renewal:
    once the old certificate is revoked, calls still pass with the new one."""
    player_client.close_idle_connections()
    client_creds = lab_ca.issue("vno-keepalive", Role.VNO)
    with ServiceServer(DemoService(), creds["pip1"]) as srv:
        assert PlayerClient(srv.url, client_creds, 5).get("/v1/whoami").status == 200
        old = x509.load_pem_x509_certificate(client_creds.cert_path.read_bytes()).serial_number
        lab_ca.renew("vno-keepalive")
        assert lab_ca.revoke(old) == [old]
        assert PlayerClient(srv.url, client_creds, 5).get("/v1/whoami").status == 200
