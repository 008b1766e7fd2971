"""Progress for people: one live status line on a terminal, nothing for scripts.

`Live` is a progress callback (`live("deploying")`) and a context manager. On
a terminal (stderr a TTY, no --json) it keeps one line at the bottom of stderr,
redrawn ten times a second by a daemon thread: a spinner, the current step,
the seconds spent on it, and a bar when the step has a known count
(`live.steps(8, "booting VMs")` then `live.advance()`). A step that ended
after more than `KEEP_SECONDS` stays on screen as a finished line with its
time, so the person sees where the time went; quicker ones are overwritten.

Without a terminal, or with --json, it writes nothing (stdout stays the
result, stderr the errors), unless VNET_PROGRESS=plain asks for the old
timestamped lines (for logs and CI); VNET_PROGRESS=off silences a terminal.

The clock, `keep_seconds` and `redraw_seconds` are parameters so a test can
drive time itself (`redraw_seconds=None`: no thread; `tick()` redraws once).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

KEEP_SECONDS = 1.0
FRAMES = "|/-\\"
BAR_WIDTH = 20
REDRAW_SECONDS = 0.1
DEFAULT_COLUMNS = 80


def mode(json_output: bool, stream: TextIO) -> str:
    """live, plain or off, for this command's output options and stream."""
    wanted = os.environ.get("VNET_PROGRESS", "")
    if json_output or wanted == "off":
        return "off"
    if wanted == "plain":
        return "plain"
    isatty = getattr(stream, "isatty", None)
    return "live" if isatty is not None and isatty() else "off"


class Live:
    """A status line for the steps of one command (see the module's doc)."""

    def __init__(self, json_output: bool = False, stream: TextIO | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 keep_seconds: float = KEEP_SECONDS,
                 redraw_seconds: float | None = REDRAW_SECONDS) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode(json_output, self.stream)
        self.clock = clock
        self.keep_seconds = keep_seconds
        self.redraw_seconds = redraw_seconds
        self.start = clock()
        self.step = ""
        self.step_start = self.start
        self.total = 0
        self.done = 0
        self.frame = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    # -- the callback ----------------------------------------------------------------

    def __call__(self, message: str) -> None:
        """A new step: the previous one ends (kept if it took long)."""
        now = self.clock()
        with self._lock:
            if self.mode == "live":
                self._finish_step(now)
            self.step, self.step_start, self.total, self.done = message, now, 0, 0
            if self.mode == "plain":
                print(f"[{now - self.start:6.2f}s] {message}", file=self.stream, flush=True)
            elif self.mode == "live":
                self._draw(now)
        self._ensure_thread()

    def steps(self, total: int, message: str) -> None:
        """A step of `total` parts, drawn as a bar; `advance()` counts them."""
        self(message)
        with self._lock:
            self.total, self.done = max(total, 0), 0
            if self.mode == "live":
                self._draw(self.clock())

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done = min(self.done + count, self.total) if self.total else self.done + count
            if self.mode == "plain" and self.total:
                print(f"[{self.clock() - self.start:6.2f}s] {self.step}: "
                      f"{self.done}/{self.total}", file=self.stream, flush=True)
            elif self.mode == "live":
                self._draw(self.clock())

    def close(self) -> None:
        """End the last step and leave the terminal's line clean."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        with self._lock:
            if self.mode == "live":
                self._finish_step(self.clock())
                self._clear()
            self.step = ""

    def __enter__(self) -> Live:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- drawing (with the lock held) ------------------------------------------------

    def line(self, now: float) -> str:
        """The status line as drawn now (without the terminal's controls)."""
        spent = now - self.step_start
        text = f"{FRAMES[self.frame % len(FRAMES)]} {self.step}"
        if self.total:
            filled = BAR_WIDTH * self.done // self.total
            text += f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total}"
        text += f" {spent:5.1f}s"
        width = self.columns() - 1
        return text if len(text) <= width else text[: max(width - 3, 0)] + "..."

    def columns(self) -> int:
        """The width of the terminal drawn on (stderr's, not stdout's)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):  # no fd, closed, or not a terminal
            return DEFAULT_COLUMNS
        return columns if columns > 0 else DEFAULT_COLUMNS

    def tick(self) -> None:
        """One redraw of the running step (what the thread does each period)."""
        with self._lock:
            if self.step and self.mode == "live":
                self.frame += 1
                self._draw(self.clock())

    def _draw(self, now: float) -> None:
        self.stream.write("\r\x1b[2K" + self.line(now))
        self.stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._shown = False

    def _finish_step(self, now: float) -> None:
        spent = now - self.step_start
        if self.step and spent >= self.keep_seconds:
            self._clear()
            count = f" ({self.done}/{self.total})" if self.total else ""
            self.stream.write(f"  {self.step}{count}: {spent:.1f}s\n")
            self.stream.flush()

    def _ensure_thread(self) -> None:
        if self._thread is None and self.mode == "live" and self.redraw_seconds:
            self._thread = threading.Thread(target=self._spin, name="vnet-progress",
                                            daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        period = self.redraw_seconds or REDRAW_SECONDS
        while not self._stop.wait(period):
            self.tick()
