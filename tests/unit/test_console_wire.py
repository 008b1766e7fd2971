"""The console's pure parts: greeting lines, URLs and the escape sequence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vnetlib.console.client import Escape
from vnetlib.console.wire import (
    TICKET_DELAY,
    HopError,
    address_of,
    dial,
    greeting,
    open_line,
    peer_of,
    read_line,
    refusal,
    refusal_of,
    request_of,
    token_of,
)
from vnetlib.players.pki import LabCA, PkiError, Role


def test_greeting_round_trip_and_refusals() -> None:
    token = "A" * 43
    assert token_of(greeting(token)) == token
    for bad in (b"VNET-CONSOLE 2 abc\n", b"VNET-CONSOLE 1 \n", b"VNET-CONSOLE 1 a b\n",
                b"VNET-CONSOLE 1 abc", b"VNET-CONSOLE 1 " + b"a" * 200 + b"\n",
                b"GET / HTTP/1.1\r\n", b"VNET-CONSOLE 1 ab/c\n"):
        with pytest.raises(ValueError):
            token_of(bad)


def test_setup_lines_and_refusals() -> None:
    line = open_line("v0123456789", "n1", "shell")
    assert line == b"VNET-CONSOLE-OPEN 1 v0123456789 n1 shell\n"
    assert request_of(line) == ("v0123456789", "n1", "shell")
    for bad in (b"VNET-CONSOLE-OPEN 1 v n1\n", b"VNET-CONSOLE-OPEN 1 v n1 tty\n",
                b"VNET-CONSOLE-OPEN 1 v N1 shell\n", b"VNET-CONSOLE-OPEN 1 v n1 shell",
                b"VNET-CONSOLE-OPEN 1 v n1 shell x\n", b"VNET-CONSOLE-OPEN 1 ../x n1 shell\n",
                b"VNET-CONSOLE 1 " + b"a" * 43 + b"\n",
                b"VNET-CONSOLE-OPEN 1 " + b"v" * 200 + b" n1 shell\n"):
        with pytest.raises(ValueError):
            request_of(bad)
    with pytest.raises(ValueError):
        open_line("v 1", "n1", "shell")
    answer = refusal(404, "not-found", "no VNet\nv9 " + "x" * 1000)
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1 and len(answer) <= 512
    status, code, message = refusal_of(answer) or (0, "", "")
    assert (status, code) == (404, "not-found") and message.startswith("no VNet v9 x")
    assert refusal_of(b"ERR bad greeting\n") is None


def test_console_urls() -> None:
    assert address_of("tls://127.0.0.1:4000") == ("127.0.0.1", 4000)
    for bad in ("https://127.0.0.1:4000", "tls://127.0.0.1", "tls://:4000"):
        with pytest.raises(HopError):
            address_of(bad)


def test_escape_sequences() -> None:
    e = Escape()
    assert e.feed(b"ls\r") == (b"ls\r", False)
    assert e.feed(b"~.") == (b"", True)
    e = Escape()
    assert e.feed(b"a~.") == (b"a~.", False)  # not at the start of a line
    assert e.feed(b"\x1d") == (b"", False)
    assert e.feed(b"x") == (b"\x1dx", False)  # Ctrl-] then anything else: both sent
    assert e.feed(b"echo\x1dq") == (b"echo", True)
    e = Escape()
    assert e.feed(b"~x") == (b"~x", False)


def test_a_listener_is_reached_again_by_resumption_and_still_checks_revocation(
        tmp_path: Path) -> None:
    """The second connection to a listener resumes the first's TLS 1.3
    session; both ends still see (and check against the CRL) the other's
    certificate, so a client revoked meanwhile is refused at its greeting."""
    ca = LabCA.create(tmp_path / "ca", "wire")
    listener, client = ca.issue("vno", Role.VNO), ca.issue("sp", Role.SP)
    context = client.client_context()

    async def run() -> list[tuple[bool, str]]:
        seen: list[tuple[bool, str]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            obj = writer.get_extra_info("ssl_object")
            try:
                await read_line(reader, 5)
                seen.append((obj.session_reused, peer_of(writer, listener).name))
                writer.write(b"OK\n")
            except PkiError as exc:
                seen.append((obj.session_reused, f"refused: {exc}"))
                writer.write(b"ERR revoked\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=listener.server_context())
        url = f"tls://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            for _ in range(2):
                _, w = await dial(url, "t0k", context, client, expect_name="vno")
                await asyncio.sleep(TICKET_DELAY + 0.05)  # the ticket is kept off the path
                w.close()
            ca.revoke("sp")
            with pytest.raises(HopError, match="revoked"):
                await dial(url, "t0k", context, client, expect_name="vno")
        finally:
            server.close()
        return seen

    seen = asyncio.run(run())
    assert seen[0] == (False, "sp")
    assert seen[1] == (True, "sp")  # resumed, and the certificate still known
    assert seen[2][0] is True and seen[2][1].startswith("refused"), seen
