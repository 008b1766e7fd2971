"""A VNP or VNO killed (SIGKILL) in the middle of an instantiation leaves
nothing behind once it is started again and has reconciled: no sliver at any
PIP, no VNet at the VNP that the VNO does not know, no namespace of the lab.

Each crash is placed with a fault point ([faults] stall_at): the player is
restarted on its port with the fault, stalls there (it says so in its log),
is killed, and is started again without it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.conftest import Lab, Vnet, netns_list, new_lab
from vnetlib.lab import processes
from vnetlib.lab.players import load_players, service_provider
from vnetlib.players import config as player_config
from vnetlib.players import messages as m
from vnetlib.players.client import ClientError, PlayerClient
from vnetlib.players.config import Faults, PlayerConfig
from vnetlib.players.node import credentials_for
from vnetlib.players.stores import PlayerStore
from vnetlib.spec import parse_vnet
from vnetlib.spec.model import VNetSpec

_T = TypeVar("_T")
RECONCILED = 30.0  # bound on every wait for the reconcilers (PIP reservations last 60 s)


@pytest.fixture(scope="module")
def crashlab(vnet: Vnet) -> Iterator[Lab]:
    """Two PIPs of one host each (Berlin, London), a VNP and a VNO, as processes."""
    made = new_lab(vnet, "--pips", "2", "--hosts", "1")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _spec(*locations: str) -> VNetSpec:
    nodes = "".join(f'<node id="n{i}" location="{loc}"/>' for i, loc in enumerate(locations))
    return parse_vnet(f'<vnet xmlns="urn:vnet:rdl:1" version="1" name="crash">{nodes}'
                      "</vnet>".encode())


class Player:
    """One of the lab's player processes, restarted on its own port."""

    def __init__(self, vnet: Vnet, lab: Lab, name: str) -> None:
        self.dir = Path(vnet.env["VNET_HOME"]) / "labs" / lab.name
        self.name = name
        self.path = Path(load_players(self.dir)[name].config)
        self.url = str(load_players(self.dir)[name].url)

    @property
    def config(self) -> PlayerConfig:
        return player_config.load(self.path)

    @property
    def log(self) -> Path:
        return self.dir / "log" / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "run" / f"{self.name}.pid"

    def restart(self, faults: Faults) -> None:
        """Stop it (SIGTERM) and start it with `faults`, listening where it did."""
        processes.stop(self.pidfile, self.path)
        port = self.url.rsplit(":", 1)[1]
        config = replace(self.config, listen=f"127.0.0.1:{port}", faults=faults)
        self.path.write_text(player_config.dump(config))
        url = processes.start(config.role.value, self.path, log=self.log,
                              pidfile=self.pidfile, ready=self.dir / "run" / f"{self.name}.url")
        assert url == self.url

    def kill(self) -> None:
        pid = processes.running(self.pidfile, self.path)
        assert pid is not None, f"{self.name} does not run"
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # our child: started by restart()

    def client(self, upstream_url: str) -> PlayerClient:
        """A client of another player, presenting this player's certificate."""
        return PlayerClient(upstream_url, credentials_for(self.config), 30.0)


def _wait_for_log(player: Player, text: str, since: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in player.log.read_text(errors="replace")[since:]:
        assert time.monotonic() < deadline, f"{player.name} never logged {text!r}"
        time.sleep(0.1)


def _poll(what: str, probe: Callable[[], _T | None], timeout: float = RECONCILED) -> _T:
    deadline = time.monotonic() + timeout
    while (got := probe()) is None:
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.3)
    return got


def _request_in_background(lab: Lab, spec: VNetSpec) -> tuple[threading.Thread, list[object]]:
    """The SP's request, which the crash cuts: its outcome (view or error) lands in a list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(service_provider(lab.name, 120.0).request_vnet(spec))
        except ClientError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _strangers(vnet: Vnet, lab: Lab) -> list[str]:
    """The VNets the VNP holds for the VNO that the VNO's store does not know."""
    vnp, vno = Player(vnet, lab, "vnp"), Player(vnet, lab, "vno")
    at_vnp = m.vnet_list_from(m.read(vno.client(vnp.url).get("/v1/vnets").body, "vnet-list"))
    store = PlayerStore(vno.config.store, "vno")
    try:
        known = {str(v) for r in store.all() for v in (r.data.get("key"), r.data.get("vnp_id"))
                 if v}
    finally:
        store.close()
    return [f"VNet {v.id} at the VNP" for v in at_vnp if not {v.id, v.name} & known]


def _left(vnet: Vnet, lab: Lab) -> list[str]:
    """Slivers at the PIPs, VNets at the VNP the VNO does not know, namespaces."""
    vnp = Player(vnet, lab, "vnp")
    left = _strangers(vnet, lab)
    for pip in ("pip1", "pip2"):
        reply = vnp.client(Player(vnet, lab, pip).url).get("/v1/slivers")
        left += [f"sliver {s.id} at {pip}" for s in m.slivers_from(m.read(reply.body, "slivers"))]
    return left + [n for n in netns_list() if n.startswith(f"vn-{lab.name}p")]


def _nothing_left(vnet: Vnet, lab: Lab) -> None:
    deadline = time.monotonic() + RECONCILED
    while (left := _left(vnet, lab)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def test_vnp_killed_after_allocating_releases_everything_on_restart(
        vnet: Vnet, crashlab: Lab) -> None:
    vnp = Player(vnet, crashlab, "vnp")
    since = vnp.log.stat().st_size
    vnp.restart(Faults(stall_at="vnp-after-allocate", stall_seconds=120.0))
    request, outcome = _request_in_background(crashlab, _spec("berlin", "london"))
    _wait_for_log(vnp, "injected stall at vnp-after-allocate", since)
    held = [s for pip in ("pip1", "pip2") for s in m.slivers_from(m.read(
        vnp.client(Player(vnet, crashlab, pip).url).get("/v1/slivers").body, "slivers"))]
    assert len(held) == 2  # one part allocated at each PIP, nothing deployed yet

    vnp.kill()
    request.join(30)
    assert outcome and isinstance(outcome[0], ClientError)  # the SP learns it failed
    vnp.restart(Faults())
    sp = service_provider(crashlab.name, 60.0)
    _poll("the VNO forgets the VNet the VNP never finished", lambda: sp.list() == [] or None)
    _nothing_left(vnet, crashlab)


def test_vno_killed_after_the_vnp_answered_keeps_the_vnet_on_restart(
        vnet: Vnet, crashlab: Lab) -> None:
    vno = Player(vnet, crashlab, "vno")
    since = vno.log.stat().st_size
    vno.restart(Faults(stall_at="vno-after-vnp", stall_seconds=120.0))
    request, outcome = _request_in_background(crashlab, _spec("berlin"))
    _wait_for_log(vno, "injected stall at vno-after-vnp", since)
    vno.kill()
    request.join(30)
    assert outcome and isinstance(outcome[0], ClientError)

    vno.restart(Faults())
    sp = service_provider(crashlab.name, 60.0)
    (view,) = _poll("the VNO resolves the VNet it requested as ready",
                    lambda: [v for v in sp.list() if v.status == "ready"] or None)
    assert view.name == "crash" and view.nodes == ("n0",)
    assert _strangers(vnet, crashlab) == []
    assert sp.delete(view.id) is True
    _nothing_left(vnet, crashlab)


def test_vno_killed_before_calling_the_vnp_forgets_the_vnet_on_restart(
        vnet: Vnet, crashlab: Lab) -> None:
    vno = Player(vnet, crashlab, "vno")
    since = vno.log.stat().st_size
    vno.restart(Faults(stall_at="vno-before-vnp", stall_seconds=120.0))
    request, outcome = _request_in_background(crashlab, _spec("london"))
    _wait_for_log(vno, "injected stall at vno-before-vnp", since)
    store = PlayerStore(vno.config.store, "vno")
    try:  # recorded before the VNP is called
        assert [r.data["status"] for r in store.all()] == ["requesting"]
    finally:
        store.close()
    vno.kill()
    request.join(30)
    assert outcome and isinstance(outcome[0], ClientError)

    vno.restart(Faults())
    sp = service_provider(crashlab.name, 60.0)
    _poll("the VNO forgets the VNet the VNP never heard of", lambda: sp.list() == [] or None)
    _nothing_left(vnet, crashlab)
