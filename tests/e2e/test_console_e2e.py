"""`vnet console` against players running as separate processes (`vnet
serve`): a piped session reaches a netns node through SP -> VNO -> VNP ->
PIP, and a player stopped by a signal ends the session with a notice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab, until_in
from vnetlib.core.ledger import Ledger
from vnetlib.players.config import load as load_config


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




PAIR = """<vnet xmlns="urn:vnet:rdl:1" version="1" name="pair">
  <node id="r1" kind="netns" cpu="1" memory="64"/>
  <node id="e1" kind="netns" cpu="1" memory="64"/>
  <link id="l1"><endpoint node="r1" interface="e0"><address>198.19.246.1/30</address>
    </endpoint><endpoint node="e1" interface="e0"><address>198.19.246.2/30</address>
    </endpoint></link>
</vnet>"""


def _host_of(vnet: Vnet, lab: Lab, node: str) -> str:
    """The substrate host of `node` in the PIP's ledger (its only VNet)."""
    config = load_config(Path(vnet.env["VNET_HOME"]) / "labs" / lab.name / "players" /
                         "pip1.toml")
    ledger = Ledger(config.store, lab.substrate)
    try:
        (s,) = [s for s in ledger.slivers() if s.state.value == "ready"]
        return s.embedding.node_map[node]
    finally:
        ledger.close()


def test_a_session_follows_its_node_when_the_pip_operator_drains_its_host(
        vnet: Vnet, lab1: Lab, tmp_path: Path) -> None:
    """`vnet drain` runs in a process of its own on the PIP's store: the PIP
    server learns the move from its ledger when the node's old shell ends,
    and the session goes on in a new shell where the node is now."""
    spec = tmp_path / "pair.xml"
    spec.write_text(PAIR)
    vnet_id = vnet.json("up", str(spec), "--lab", lab1.name)["vnet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vnetlib.cli.main", "console", vnet_id, "r1", "--lab",
         lab1.name, "--linger", "60"],
        env=vnet.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    source = _host_of(vnet, lab1, "r1")
    try:
        proc.stdin.write(b"echo before-$((6*7))\n")
        proc.stdin.flush()
        assert b"before-42" in until_in(proc, b"before-42", 30)
        vnet.run("drain", source, "--substrate", lab1.substrate)  # not through the PIP server
        target = _host_of(vnet, lab1, "r1")
        assert target != source
        proc.stdin.write(b"echo after-$((6*7))\n")
        proc.stdin.flush()
        out = until_in(proc, b"after-42", 60)
        assert b"moved" in out and b"after-42" in out, out[-500:]
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.stdin = None
        proc.kill()
        proc.communicate(timeout=30)
        vnet.run("drain", source, "--substrate", lab1.substrate, "--undo", check=False)
        vnet.run("down", vnet_id, "--lab", lab1.name, check=False)


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
