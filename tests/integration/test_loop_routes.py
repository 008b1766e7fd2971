"""Routes whose handler runs on the transport's loop (`on_loop`), and
`AsyncCalls`, the loop's own client, on real sockets and mutual TLS: the
same answers, role checks and error documents as a worker's handler, calls
kept alive on one connection, the server checked by name on a new
connection and against the CRL on a kept-alive one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import pytest

from tests.integration.conftest import DemoService
from vnetlib.players.client import AsyncCalls, RemoteError, TransportError, UnexpectedPeer
from vnetlib.players.pki import Credentials, Identity, LabCA, Role
from vnetlib.players.server import Conflict, ServiceServer


class LoopService(DemoService):
    """DemoService with a POST whose handler is a coroutine (and a plain one
    for callers that dispatch in their own thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

        def plain(caller: Identity, params: Mapping[str, str],
                  body: bytes) -> tuple[int, bytes]:
            self.threads.append(threading.current_thread().name)
            return 200, b"<plain/>"

        async def on_loop(caller: Identity, params: Mapping[str, str],
                          body: bytes) -> tuple[int, bytes]:
            self.threads.append(threading.current_thread().name)
            await asyncio.sleep(0)
            if params["id"] == "busy":
                raise Conflict("busy")
            return 200, b"<echo>" + body + b"</echo>"

        self.add_route("POST", "/v1/echo/{id}", plain, roles={Role.VNO}, on_loop=on_loop)


async def _calls(calls: AsyncCalls, url: str, n: int, name: str = "pip1") -> list[bytes]:
    return [(await calls.post(url, "/v1/echo/x", b"<a/>", expect_name=name, timeout=5)).body
            for _ in range(n)]


def test_a_loop_route_answers_on_the_loop_over_one_kept_alive_connection(
        creds: dict[str, Credentials]) -> None:
    service = LoopService()
    with ServiceServer(service, creds["pip1"]) as srv:
        calls = AsyncCalls(creds["vno1"])

        async def run() -> list[bytes]:
            try:
                out = await _calls(calls, srv.url, 3)
                assert srv.open_connections == 1  # the three calls shared it
                return out
            finally:
                calls.close()

        assert asyncio.run(run()) == [b"<echo><a/></echo>"] * 3
        assert service.threads == [f"vnet-{service.name}"] * 3  # the loop's thread, no worker
        assert service.dispatch("POST", "/v1/echo/x", Identity("vno1", Role.VNO),
                                b"").body == b"<plain/>"


def test_a_loop_route_checks_roles_and_answers_errors_as_documents(
        creds: dict[str, Credentials]) -> None:
    with ServiceServer(LoopService(), creds["pip1"]) as srv:
        async def run() -> None:
            vnp_calls, vno_calls = AsyncCalls(creds["vnp1"]), AsyncCalls(creds["vno1"])
            try:
                with pytest.raises(RemoteError) as forbidden:
                    await vnp_calls.post(srv.url, "/v1/echo/x", b"<a/>", expect_name="pip1")
                assert forbidden.value.status == 403
                with pytest.raises(RemoteError) as busy:
                    await vno_calls.post(srv.url, "/v1/echo/busy", b"<a/>",
                                         expect_name="pip1")
                assert (busy.value.status, busy.value.code) == (409, "conflict")
            finally:
                vnp_calls.close()
                vno_calls.close()

        asyncio.run(run())


def test_async_calls_check_the_servers_name(creds: dict[str, Credentials]) -> None:
    with ServiceServer(LoopService(), creds["pip1"]) as srv:
        calls = AsyncCalls(creds["vno1"])

        async def run() -> None:
            try:
                with pytest.raises(UnexpectedPeer):
                    await calls.post(srv.url, "/v1/echo/x", b"<a/>", expect_name="pip2")
            finally:
                calls.close()

        asyncio.run(run())


def test_async_calls_refuse_a_server_revoked_since_the_handshake(
        lab_ca: LabCA, creds: dict[str, Credentials]) -> None:
    server = lab_ca.issue("pip-loop", Role.PIP)
    with ServiceServer(LoopService(), server) as srv:
        calls = AsyncCalls(creds["vno1"])

        async def run() -> None:
            try:
                await _calls(calls, srv.url, 1, "pip-loop")
                assert srv.open_connections == 1
                lab_ca.revoke("pip-loop")
                # the kept-alive connection is dropped; the fresh handshake fails
                with pytest.raises(TransportError):
                    await _calls(calls, srv.url, 1, "pip-loop")
            finally:
                calls.close()

        asyncio.run(run())
