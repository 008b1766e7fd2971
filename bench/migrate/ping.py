"""A timestamped 10 ms ping and the longest gap between its answers.

The ping writes into a file, not a pipe: a pipe nobody reads fills after
~700 answers (64 KiB) and then blocks the ping, which a long move (or one
under load) showed as a multi-second "gap" that was not in the network."""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import time


class Pinger:
    """`ping -D -i 0.01` from namespace `netns` to `address` until `stop`."""

    def __init__(self, netns: str, address: str) -> None:
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-D", "-n", "-i", "0.01", "-W", "1", address],
            stdout=self.out, stderr=subprocess.STDOUT, text=True)
        self.text = ""

    def stop(self) -> list[float]:
        """The times of the answers (seconds since the epoch)."""
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.out.seek(0)
        text = self.text = self.out.read()
        self.out.close()
        return [float(line[1:line.index("]")]) for line in text.splitlines()
                if line.startswith("[") and "bytes from" in line]


def longest_gap(stamps: list[float], start: float, end: float) -> float:
    """The longest time without an answer within [start, end]."""
    points = [start, *[t for t in stamps if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(points))


def reachable(netns: str, address: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address],
                          capture_output=True).returncode == 0:
            return True
    return False
