"""The console's pure parts: greeting lines, URLs and the escape sequence."""

from __future__ import annotations

import pytest

from vnetlib.console.client import Escape
from vnetlib.console.wire import HopError, address_of, greeting, token_of


def test_greeting_round_trip_and_refusals() -> None:
    token = "A" * 43
    assert token_of(greeting(token)) == token
    for bad in (b"VNET-CONSOLE 2 abc\n", b"VNET-CONSOLE 1 \n", b"VNET-CONSOLE 1 a b\n",
                b"VNET-CONSOLE 1 abc", b"VNET-CONSOLE 1 " + b"a" * 200 + b"\n",
                b"GET / HTTP/1.1\r\n", b"VNET-CONSOLE 1 ab/c\n"):
        with pytest.raises(ValueError):
            token_of(bad)


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
