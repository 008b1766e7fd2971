"""The players' HTTP layer over real sockets and real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time

import pytest
from lxml import etree

from tests.integration.conftest import DemoService
from vnetlib.players.client import PlayerClient, RemoteError, TransportError, UnexpectedPeer
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.server import RDL_NS, ServiceServer

GOOD_VNET = b'<vnet xmlns="urn:vnet:rdl:1" id="b"><node cpu="1"/></vnet>'


def client(server: ServiceServer, creds: Credentials, timeout: float = 5.0,
           **kwargs: object) -> PlayerClient:
    return PlayerClient(server.url, creds, timeout, **kwargs)  # type: ignore[arg-type]


def remote_error(server: ServiceServer, creds: Credentials, method: str, path: str,
                 body: bytes | None = None) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        client(server, creds).request(method, path, body)
    return info.value


def raw_request(server: ServiceServer, ctx: ssl.SSLContext, method: str, path: str,
                body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(server.host, server.port, context=ctx, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_lab_client_gets_through_and_handler_sees_its_identity(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    status, body = client(server, creds["vno1"]).get("/v1/vnets/a")
    assert status == 200
    assert etree.fromstring(body).get("id") == "a"
    service = server.service
    assert isinstance(service, DemoService)
    assert service.seen == [Identity("vno1", Role.VNO)]


def test_whoami_reports_certificate_name_and_role(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    status, body = client(server, creds["vnp1"]).get("/v1/whoami")
    root = etree.fromstring(body)
    assert (status, root.get("name"), root.get("role")) == (200, "vnp1", "vnp")


def test_client_without_certificate_is_refused(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    ctx = ssl.create_default_context(cafile=str(creds["vno1"].ca_path))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_request(server, ctx, "GET", "/v1/whoami")
    # The server is still there for the next, proper client.
    assert client(server, creds["vno1"]).get("/v1/whoami").status == 200


def test_client_with_certificate_from_another_ca_is_refused(
        server: ServiceServer, creds: dict[str, Credentials],
        foreign_creds: Credentials) -> None:
    # It trusts our CA, so only the server's refusal can stop it.
    impostor = Credentials(foreign_creds.cert_path, foreign_creds.key_path,
                           creds["vno1"].ca_path)
    with pytest.raises(TransportError):
        client(server, impostor).get("/v1/whoami")


def test_client_refuses_a_server_from_another_ca(
        creds: dict[str, Credentials], foreign_creds: Credentials) -> None:
    srv = ServiceServer(DemoService(), foreign_creds)
    with srv, pytest.raises(TransportError, match="TLS"):
        client(srv, creds["vno1"]).get("/v1/whoami")


def test_client_checks_the_role_it_expects(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    assert client(server, creds["vnp1"], expect_role=Role.PIP,
                  expect_name="pip1").get("/v1/whoami").status == 200
    with pytest.raises(UnexpectedPeer, match="expected a vnp") as info:
        client(server, creds["vno1"], expect_role=Role.VNP).get("/v1/whoami")
    assert info.value.peer == Identity("pip1", Role.PIP)


def test_wrong_role_is_forbidden(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    err = remote_error(server, creds["pip1"], "GET", "/v1/vnets/a")
    assert (err.status, err.code) == (403, "forbidden")
    assert "pip:pip1" in err.message
    root = etree.fromstring(err.document)
    assert root.tag == f"{{{RDL_NS}}}error"
    assert root.get("code") == "forbidden"


def test_another_vnos_vnet_does_not_exist_for_it(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    err = remote_error(server, creds["vno2"], "GET", "/v1/vnets/a")
    assert (err.status, err.code) == (404, "not-found")


def test_malformed_xml_is_400_naming_the_problem(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    err = remote_error(server, creds["vno1"], "POST", "/v1/vnets",
                       b'<vnet xmlns="urn:vnet:rdl:1" id="x">\n<node cpu="1"></vnet>')
    assert (err.status, err.code) == (400, "malformed")
    assert "line 2" in err.message
    assert "mismatch" in err.message


def test_doctype_is_refused(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    body = b'<!DOCTYPE v [<!ENTITY x "y">]><vnet xmlns="urn:vnet:rdl:1" id="&x;"/>'
    err = remote_error(server, creds["vno1"], "POST", "/v1/vnets", body)
    assert err.status == 400
    assert "DOCTYPE" in err.message


def test_schema_invalid_is_422_naming_line_and_element(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    body = b'<vnet xmlns="urn:vnet:rdl:1" id="x">\n<node cpu="0"/></vnet>'
    err = remote_error(server, creds["vno1"], "POST", "/v1/vnets", body)
    assert (err.status, err.code) == (422, "schema-invalid")
    assert "line 2" in err.message
    assert "node" in err.message


def test_create_then_conflict(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    status, body = client(server, creds["vno1"]).post("/v1/vnets", GOOD_VNET)
    assert (status, body) == (201, GOOD_VNET)
    err = remote_error(server, creds["vno1"], "POST", "/v1/vnets", GOOD_VNET)
    assert (err.status, err.code) == (409, "conflict")


def test_oversize_body_is_413(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    err = remote_error(server, creds["vno1"], "POST", "/v1/vnets", b"<a>" + b"x" * 5000 + b"</a>")
    assert (err.status, err.code) == (413, "too-large")


def test_body_must_be_xml(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    status, body = raw_request(server, creds["vno1"].client_context(), "POST", "/v1/vnets",
                               b"{}", {"Content-Type": "application/json"})
    assert status == 415
    assert etree.fromstring(body).get("code") == "unsupported-media-type"


@pytest.mark.parametrize(("path", "fragment"), [
    ("/v1/nothing", "no resource at /v1/nothing"),
    ("/v2/vnets/a", "API version v2"),
    ("/v1/vnets/a/b", "no resource"),
])
def test_unknown_path_is_404(server: ServiceServer, creds: dict[str, Credentials],
                             path: str, fragment: str) -> None:
    err = remote_error(server, creds["vno1"], "GET", path)
    assert (err.status, err.code) == (404, "not-found")
    assert fragment in err.message


def test_wrong_method_is_405_with_allow(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    err = remote_error(server, creds["vno1"], "DELETE", "/v1/vnets/a")
    assert err.status == 405
    status, _ = raw_request(server, creds["vno1"].client_context(), "PATCH", "/v1/vnets/a")
    assert status == 501


def test_query_strings_are_refused(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    assert remote_error(server, creds["vno1"], "GET", "/v1/whoami?x=1").status == 400


def test_handler_crash_is_500_without_details(
        server: ServiceServer, creds: dict[str, Credentials],
        caplog: pytest.LogCaptureFixture) -> None:
    err = remote_error(server, creds["vno1"], "GET", "/v1/crash")
    assert (err.status, err.code) == (500, "internal")
    assert "secret detail" not in err.document.decode()
    assert "Traceback" not in err.document.decode()
    assert "secret detail" in caplog.text  # but the server log has it


def test_client_timeout_bounds_the_whole_call(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError):
        client(server, creds["vno1"], timeout=0.5).get("/v1/slow")
    assert time.monotonic() - start < 1.4


def test_silent_connection_does_not_block_others(
        server: ServiceServer, creds: dict[str, Credentials]) -> None:
    with socket.create_connection((server.host, server.port), timeout=5):
        # Connected, no TLS handshake: the accept loop must still serve others.
        assert client(server, creds["vno1"], timeout=2).get("/v1/whoami").status == 200


def test_connection_refused_is_a_transport_error(creds: dict[str, Credentials]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError):
        PlayerClient(f"https://127.0.0.1:{port}", creds["vno1"], 2).get("/v1/whoami")


def test_concurrent_requests(server: ServiceServer, creds: dict[str, Credentials]) -> None:
    results: list[int] = []

    def call() -> None:
        results.append(client(server, creds["vnp1"]).get("/v1/whoami").status)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 8


def test_stop_is_clean_and_frees_the_port(creds: dict[str, Credentials]) -> None:
    srv = ServiceServer(DemoService(), creds["pip1"]).start()
    port = srv.port
    assert port > 0
    srv.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
