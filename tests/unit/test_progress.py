"""The live status line: drawn on a real pseudo-terminal, silent elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios
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


def drain(fd: int, wait: float = 0.2) -> str:
    out = b""
    while select.select([fd], [], [], wait)[0]:
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


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_live_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                 terminal: tuple[io.TextIOWrapper, int]) -> None:
    monkeypatch.delenv("VNET_PROGRESS", raising=False)
    tty, reader = terminal
    clock = Clock()
    with Live(stream=tty, clock=clock, keep_seconds=1.0, redraw_seconds=None) as live:
        live("parsing figure6.xml")
        clock.now += 0.2
        live("embedding 6 nodes")  # quick: overwritten, not kept
        clock.now += 1.3  # long: kept as a finished line with its time
        live.steps(4, "booting VMs")
        for _ in range(4):
            live.advance()
        clock.now += 0.5
        for _ in range(3):
            live.tick()  # the spinner's redraws
        shown = live.line(clock())
        assert live._thread is None  # redraw_seconds=None: the test draws
    out = drain(reader)
    assert "parsing figure6.xml" in out and "\r\x1b[2K" in out
    assert "  embedding 6 nodes: 1.3s\r\n" in out  # the kept line, with its time
    assert "parsing figure6.xml: " not in out
    assert "[####################] 4/4" in out and shown.endswith("4/4   0.5s")
    assert out.count("booting VMs [####################] 4/4   0.5s") == 3
    frames = [out[i - 2] for i in range(len(out)) if out.startswith("booting VMs [#", i)]
    assert frames[-3:] == ["/", "-", "\\"]  # each redraw turns the spinner
    assert out.endswith("\r\x1b[2K")  # the line is cleared at the end


def test_the_thread_redraws_on_its_own(monkeypatch: pytest.MonkeyPatch,
                                       terminal: tuple[io.TextIOWrapper, int]) -> None:
    """With a period, a daemon thread redraws until close (waited for, not timed)."""
    monkeypatch.delenv("VNET_PROGRESS", raising=False)
    tty, reader = terminal
    clock = Clock()
    out = ""
    with Live(stream=tty, clock=clock, redraw_seconds=0.01) as live:
        live("deploying")
        for _ in range(500):  # up to 5 s for two redraws on a busy machine
            out += drain(reader, 0.01)
            if out.count("deploying") >= 3:
                break
        assert live._thread is not None and live._thread.is_alive()
    assert out.count("deploying") >= 3, out
    assert live._thread is not None and not live._thread.is_alive()


def test_width_is_the_drawn_streams(monkeypatch: pytest.MonkeyPatch,
                                    terminal: tuple[io.TextIOWrapper, int]) -> None:
    """The line fits the terminal it is drawn on, whatever stdout is."""
    monkeypatch.delenv("VNET_PROGRESS", raising=False)
    tty, _ = terminal
    fcntl.ioctl(tty.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    live = Live(stream=tty, clock=Clock(), redraw_seconds=None)
    assert live.columns() == 40
    live.step = "a step with a very long description " * 3
    assert len(live.line(live.clock())) == 39 and live.line(live.clock()).endswith("...")
    assert Live(stream=io.StringIO()).columns() == 80  # no terminal: the default


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
