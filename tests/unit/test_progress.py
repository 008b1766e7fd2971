"""The live status line: drawn on a real pseudo-terminal, silent elsewhere."""

from __future__ import annotations

import io
import os
import pty
import select
import time
from collections.abc import Iterator

import pytest

from vnetlib.cli.progress import Live, mode


@pytest.fixture
def terminal() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A pty: (the program's side as a text stream, the reader's fd)."""
    reader, writer = pty.openpty()
    stream = open(writer, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        yield stream, reader
    finally:
        stream.close()
        os.close(reader)


def drain(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        out += os.read(fd, 65536)
    return out.decode()


def test_modes(monkeypatch: pytest.MonkeyPatch, terminal: tuple[io.TextIOWrapper, int]) -> None:
    tty, _ = terminal
    monkeypatch.delenv("VNET_PROGRESS", raising=False)
    assert mode(False, tty) == "live"
    assert mode(True, tty) == "off"
    assert mode(False, io.StringIO()) == "off"
    monkeypatch.setenv("VNET_PROGRESS", "plain")
    assert mode(False, io.StringIO()) == "plain"
    assert mode(True, io.StringIO()) == "off"
    monkeypatch.setenv("VNET_PROGRESS", "off")
    assert mode(False, tty) == "off"


def test_live_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                 terminal: tuple[io.TextIOWrapper, int]) -> None:
    monkeypatch.delenv("VNET_PROGRESS", raising=False)
    tty, reader = terminal
    with Live(stream=tty) as live:
        live("parsing figure6.xml")
        live("embedding 6 nodes")  # quick: overwritten, not kept
        time.sleep(1.3)  # long: kept as a finished line with its time
        live.steps(4, "booting VMs")
        for _ in range(4):
            live.advance()
        time.sleep(0.35)  # the spinner redraws meanwhile
        shown = live.line(time.monotonic())
    out = drain(reader)
    assert "parsing figure6.xml" in out and "\r\x1b[2K" in out
    assert "  embedding 6 nodes: 1." in out  # the kept line, about 1.3 s
    assert "parsing figure6.xml: " not in out
    assert "[####################] 4/4" in out and "4/4" in shown
    redraws = out.count("booting VMs [####################] 4/4")
    assert redraws >= 3, out
    assert out.endswith("\r\x1b[2K")  # the line is cleared at the end


def test_silent_without_terminal_and_with_json(
        monkeypatch: pytest.MonkeyPatch, terminal: tuple[io.TextIOWrapper, int]) -> None:
    monkeypatch.delenv("VNET_PROGRESS", raising=False)
    pipe = io.StringIO()
    with Live(stream=pipe) as live:
        live("deploying")
        live.steps(2, "filling the pool")
        live.advance(2)
    assert pipe.getvalue() == ""
    tty, reader = terminal
    with Live(True, stream=tty) as live:
        live("deploying")
    assert drain(reader) == ""


def test_plain_lines_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNET_PROGRESS", "plain")
    log = io.StringIO()
    with Live(stream=log) as live:
        live("lab up")
        live.steps(2, "pool")
        live.advance()
    lines = log.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["lab up", "pool", "pool: 1/2"]
