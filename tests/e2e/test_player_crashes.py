"""A PIP, the VNP or the VNO killed (SIGKILL) in the middle of an
instantiation or a removal of a VNet that spans both PIPs leaves nothing
behind once it is started again and has reconciled: no live sliver and no
tunnel id in any PIP's ledger, no VNet at the VNP that the VNO does not know,
no namespace of the lab, no tenant of a PIP's confinement; or the VNet is
live and complete, and `vnet down` then leaves nothing.

Each crash is placed with a fault point ([faults] stall_at): the player is
restarted on its port with the fault, stalls there (it says so in its log),
is killed, and is started again, on the same port, without it. Every bound is
below the PIPs' reservation time (60 s), so no reservation expiring on its
own can hide a leak. One lab serves every case; players are reset between them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.conftest import Lab, Vnet, netns_list, new_lab
from vnetlib import paths
from vnetlib.core.ledger import Ledger
from vnetlib.lab import processes
from vnetlib.lab.players import load_players, service_provider
from vnetlib.players import config as player_config
from vnetlib.players import messages as m
from vnetlib.players.client import ClientError, PlayerClient
from vnetlib.players.config import Faults, PlayerConfig
from vnetlib.players.node import credentials_for
from vnetlib.players.stores import PlayerStore
from vnetlib.spec import load_substrate, parse_vnet
from vnetlib.spec.model import VNetSpec

_T = TypeVar("_T")
RECONCILED = 30.0  # bound on every wait for the reconcilers (PIP reservations last 60 s)
PLAYERS = ("pip1", "pip2", "vnp", "vno")
PIPS = ("pip1", "pip2")


@pytest.fixture(scope="module")
def crashlab(vnet: Vnet) -> Iterator[Lab]:
    """Two PIPs of one host each (Berlin, London), a VNP and a VNO, as processes."""
    made = new_lab(vnet, "--pips", "2", "--hosts", "1")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _spec() -> VNetSpec:
    """n0 in Berlin (PIP 1), n1 in London (PIP 2), one link between them: two
    slivers, one inter-PIP link to stitch (PIP 1 initiates)."""
    return parse_vnet(b'''<vnet xmlns="urn:vnet:rdl:1" version="1" name="crash">
  <node id="n0" location="berlin"/><node id="n1" location="london"/>
  <link id="l0">
    <endpoint node="n0" interface="eth0"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="n1" interface="eth0"><address>198.19.0.2/30</address></endpoint>
  </link>
</vnet>''')


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
        _poll(f"{self.name} ({pid}) dies",
              lambda: processes.running(self.pidfile, self.path) is None or None, 10.0)

    def ledger(self) -> Ledger:
        """The PIP's own ledger, read beside the running PIP."""
        config = self.config
        return Ledger(config.store, load_substrate(Path(config.pip.substrate)).name)

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


_TENANT_UIDS: set[int] = set()  # every tenant uid a PIP of the lab recorded meanwhile


def _tenants(player: Player) -> list[str]:
    """Tenants the PIP's confinement still records, and processes running under
    any tenant uid the lab's PIPs have handed out during these tests."""
    uids = paths.vnet_home() / "confine" / player.name / "uids.json"
    recorded: dict[str, int] = json.loads(uids.read_text()) if uids.exists() else {}
    _TENANT_UIDS.update(recorded.values())
    left = [f"tenant {t} at {player.name}" for t in sorted(recorded)]
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            uid = int(next(line for line in status.read_text().splitlines()
                           if line.startswith("Uid:")).split()[1])
            if uid in _TENANT_UIDS:
                left.append(f"tenant process {status.parent.name} (uid {uid})")
    return left


def _left(vnet: Vnet, lab: Lab) -> list[str]:
    """What a crash may leak: VNets at the VNO and at the VNP, live slivers and
    tunnel ids in the PIPs' ledgers, slivers the PIPs list for the VNP,
    namespaces of virtual nodes, tenants."""
    vnp = Player(vnet, lab, "vnp")
    left = [f"VNet {v.id} ({v.status}) at the VNO"
            for v in service_provider(lab.name, 30.0).list()]
    left += _strangers(vnet, lab)
    for name in PIPS:
        pip = Player(vnet, lab, name)
        reply = vnp.client(pip.url).get("/v1/slivers")
        left += [f"sliver {s.id} ({s.status}) listed by {name}"
                 for s in m.slivers_from(m.read(reply.body, "slivers"))]
        ledger = pip.ledger()
        try:
            left += [f"sliver {s.name} {s.state.value} in the ledger of {name}"
                     for s in ledger.slivers()]
            left += [f"VNI {v} in the ledger of {name}" for v in sorted(ledger.used_vnis())]
        finally:
            ledger.close()
        left += _tenants(pip)
    return left + sorted(n for n in netns_list() if n.startswith(f"vn-{lab.name}p"))


def _complaints(vnet: Vnet, lab: Lab) -> str:
    """The players' last warnings and errors, to tell why something was left."""
    lines = []
    for name in PLAYERS:
        text = Player(vnet, lab, name).log.read_text(errors="replace").splitlines()
        lines += [f"{name}: {line}" for line in text
                  if " WARNING " in line or " ERROR " in line][-8:]
    return "\n".join(lines)


def _nothing_left(vnet: Vnet, lab: Lab, bound: float = RECONCILED) -> float:
    """Wait until nothing is left; how long that took."""
    started = time.monotonic()
    while (left := _left(vnet, lab)) and time.monotonic() - started < bound:
        time.sleep(0.5)
    assert left == [], f"left after {bound:.1f}s:\n{_complaints(vnet, lab)}"
    return time.monotonic() - started


def _in_background(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """The SP's call that the crash cuts: its outcome (result or error) lands in a list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(work())
        except ClientError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@dataclass(frozen=True, slots=True)
class Crash:
    """A SIGKILL of `player` stalled at `point`, while the SP requests the VNet
    or, once it is ready, removes it (`removal`); `kept`: the VNet is expected
    to survive (the VNP made it, only the VNO's answer was lost)."""

    player: str
    point: str
    removal: bool = False
    kept: bool = False

    def __str__(self) -> str:
        return f"{self.player}@{self.point}"


CASES = (
    Crash("pip1", "pip-during-deploy"),
    Crash("pip2", "pip-during-deploy"),
    Crash("pip1", "pip-before-stitch"),
    Crash("pip2", "pip-before-stitch"),
    Crash("pip2", "pip-during-remove", removal=True),
    Crash("vnp", "vnp-after-allocate"),
    Crash("vnp", "vnp-after-provision"),
    Crash("vnp", "vnp-before-release", removal=True),
    Crash("vno", "vno-before-vnp"),
    Crash("vno", "vno-after-vnp", kept=True),
)


@pytest.fixture
def players(vnet: Vnet, crashlab: Lab) -> Iterator[dict[str, Player]]:
    """The lab's players, each running without faults and with nothing left
    after the case, whatever happened in it (so one case's failure stays its own)."""
    found = {name: Player(vnet, crashlab, name) for name in PLAYERS}
    try:
        yield found
    finally:
        for player in found.values():
            if (player.config.faults != Faults()
                    or processes.running(player.pidfile, player.path) is None):
                player.restart(Faults())
        with contextlib.suppress(ClientError, LookupError):
            sp = service_provider(crashlab.name, 60.0)
            for view in sp.list():
                with contextlib.suppress(ClientError):
                    sp.delete(view.id)


def _netns_of(lab: Lab, node: str) -> list[str]:
    return [n for n in netns_list() if n.startswith(f"vn-{lab.name}p") and n.endswith(f"-{node}")]


def _assert_live_and_complete(lab: Lab, view: m.VNetView) -> None:
    """Ready at the VNO, both nodes deployed, and the inter-PIP link carries a
    ping, run as the customer's exec (confined at the PIP)."""
    assert view.status == "ready" and view.name == "crash" and view.nodes == ("n0", "n1")
    assert len(_netns_of(lab, "n0")) == 1 and len(_netns_of(lab, "n1")) == 1
    sp = service_provider(lab.name, 60.0)
    rc, out, err = sp.exec(view.id, "n0", ["ping", "-c", "1", "-W", "3", "198.19.0.2"], 20.0)
    assert rc == 0, out + err


def _at_the_stall(vnet: Vnet, lab: Lab, crash: Crash) -> None:
    """What each fault point must already have recorded when the player stalls."""
    if crash.point == "vnp-after-allocate":  # one part allocated at each PIP, nothing deployed
        vnp = Player(vnet, lab, "vnp")
        held = [s for pip in PIPS for s in m.slivers_from(m.read(
            vnp.client(Player(vnet, lab, pip).url).get("/v1/slivers").body, "slivers"))]
        assert sorted(s.status for s in held) == ["allocated", "allocated"]
        assert _netns_of(lab, "n0") == _netns_of(lab, "n1") == []
    elif crash.point == "vno-before-vnp":  # recorded before the VNP is called
        store = PlayerStore(Player(vnet, lab, "vno").config.store, "vno")
        try:
            assert [r.data["status"] for r in store.all()] == ["requesting"]
        finally:
            store.close()
    elif crash.point == "pip-during-deploy":  # the playbook ran; the ledger does not know yet
        ledger = Player(vnet, lab, crash.player).ledger()
        try:
            assert [s.state.value for s in ledger.slivers()] == ["provisioning"]
        finally:
            ledger.close()
        assert len(_netns_of(lab, "n0" if crash.player == "pip1" else "n1")) == 1
    elif crash.point == "pip-during-remove":  # removed from the hosts, still deleting
        ledger = Player(vnet, lab, crash.player).ledger()
        try:
            assert [s.state.value for s in ledger.slivers()] == ["deleting"]
            assert ledger.used_vnis()  # the stitched link's id, dropped with the sliver
        finally:
            ledger.close()
        assert _netns_of(lab, "n0" if crash.player == "pip1" else "n1") == []


@pytest.mark.parametrize("crash", CASES, ids=str)
def test_a_player_killed_at_a_fault_point_leaves_nothing_once_restarted(
        vnet: Vnet, crashlab: Lab, players: dict[str, Player], crash: Crash) -> None:
    victim = players[crash.player]
    sp = service_provider(crashlab.name, 120.0)
    ready = None
    if crash.removal:
        ready = sp.request_vnet(_spec())
        _assert_live_and_complete(crashlab, ready)
    since = victim.log.stat().st_size
    victim.restart(Faults(stall_at=crash.point, stall_seconds=120.0))
    if ready is None:
        call, outcome = _in_background(lambda: sp.request_vnet(_spec()))
    else:
        vnet_id = ready.id
        call, outcome = _in_background(lambda: sp.delete(vnet_id))
    _wait_for_log(victim, f"injected stall at {crash.point}", since)
    _at_the_stall(vnet, crashlab, crash)

    victim.kill()
    killed = time.monotonic()
    call.join(30)
    assert outcome, "the SP's call did not return once the player died"
    if not crash.removal:
        assert isinstance(outcome[0], ClientError)  # the SP learns it failed
    victim.restart(Faults())

    if crash.kept:
        (view,) = _poll("the VNO resolves the VNet the VNP made as ready",
                        lambda: [v for v in sp.list() if v.status == "ready"] or None)
        assert time.monotonic() - killed < RECONCILED
        _assert_live_and_complete(crashlab, view)
        assert _strangers(vnet, crashlab) == []
        assert sp.delete(view.id) is True
    took = _nothing_left(vnet, crashlab, RECONCILED - (time.monotonic() - killed))
    print(f"{crash}: nothing left {time.monotonic() - killed:.1f}s after the kill "
          f"({took:.1f}s of waiting)")
