"""`vnet console` against players running as separate processes (`vnet
serve`): a piped session reaches a netns node through SP -> VNO -> VNP ->
PIP, and a player stopped by a signal ends the session with a notice."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab


@pytest.fixture(scope="module")
def lab1(vnet: Vnet) -> Iterator[Lab]:
    made = new_lab(vnet, "--pips", "1", "--hosts", "2")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def console(vnet: Vnet, lab: Lab, vnet_id: str, node: str, script: bytes,
            linger: float = 3.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vnetlib.cli.main", "console", vnet_id, node, "--lab", lab.name,
         "--linger", str(linger)],
        env=vnet.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(script)
    proc.stdin.close()
    proc.stdin = None  # communicate() only reads
    return proc


def until_in(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What `proc` wrote to stdout until `marker` (or its end, or the timeout)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
    return got


def test_piped_console_session_and_a_stopped_player(vnet: Vnet, lab1: Lab) -> None:
    vnet_id = vnet.json("up", str(EXAMPLES / "figure6.xml"), "--lab", lab1.name)["vnet"]
    start = time.perf_counter()
    proc = console(vnet, lab1, vnet_id, "r1", b"id -u; hostname; ip -o link show\nexit\n")
    out, err = proc.communicate(timeout=60)
    took = time.perf_counter() - start
    assert proc.returncode == 0, err.decode()
    text = out.decode("utf-8", "replace")
    assert any(w.isdigit() and 200000 <= int(w) < 300000 for w in text.split()), text
    assert "lo:" in text and text.count(": <") >= 3, text  # lo and r1's link ends
    assert took < 30

    # a session left open while its VNP stops (SIGTERM): the client gets a notice
    proc = console(vnet, lab1, vnet_id, "r1", b"echo ready\n", linger=30.0)
    early = until_in(proc, b"ready", 30)  # the session is up (on a loaded machine, slowly)
    home = Path(vnet.env["VNET_HOME"])
    vnp = next((home / "labs" / lab1.name / "run").glob("vnp*.pid"))
    os.kill(int(vnp.read_text()), signal.SIGTERM)
    rest, err = proc.communicate(timeout=40)
    out = early + rest
    assert b"ready" in out, (out[-300:], err[-500:])
    assert b"stopped by a player on its path" in out, out[-300:]
