"""Stitching per pair of PIPs, over real TLS: three inter-PIP links take one
`<stitches>` exchange and one deployment on each side, the two sides'
deployments at the same time; the responder's failure after the initiator
deployed its ends rolls both back; a repeated batch (the confirmation) is
answered once the responder's run ended; a single `<stitch>` still works and
a malformed batch is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.players_fixtures import Players, Substrates
from tests.integration.test_players_failures import _nothing_left
from vnetlib.core.deployer import RecordingDeployer
from vnetlib.deploy.ansible import DeployError, Progress, TaskFailure
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.spec import parse_vnet

THREE_ACROSS = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="three">
  <node id="a1" location="berlin"/>
  <node id="a2" location="berlin"/>
  <node id="b1" location="paris"/>
  <node id="b2" location="paris"/>
  <link id="x1"><endpoint node="a1" interface="e0"><address>198.19.251.1/30</address></endpoint>
    <endpoint node="b1" interface="e0"><address>198.19.251.2/30</address></endpoint></link>
  <link id="x2"><endpoint node="a2" interface="e0"><address>198.19.251.5/30</address></endpoint>
    <endpoint node="b2" interface="e0"><address>198.19.251.6/30</address></endpoint></link>
  <link id="x3"><endpoint node="a1" interface="e1"><address>198.19.251.9/30</address></endpoint>
    <endpoint node="b2" interface="e1"><address>198.19.251.10/30</address></endpoint></link>
</vnet>"""


@dataclass
class Timed:
    """A recording deployer that keeps each run's interval and fails its
    `fail_run`-th "present" run (1-based; 0: never) after recording it."""

    inner: RecordingDeployer
    delay: float = 0.0
    fail_run: int = 0
    runs: list[tuple[str, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        began = time.monotonic()
        if state == "present":
            time.sleep(self.delay)
        self.inner.apply(plan, state, check=check, progress=progress)
        with self._lock:
            self.runs.append((state, began, time.monotonic()))
            failing = state == "present" and sum(
                1 for st, _, _ in self.runs if st == "present") == self.fail_run
        if failing:
            raise DeployError("failed", [TaskFailure("h1", "link", "vxlan", "boom")], "")

    def presents(self) -> list[tuple[float, float]]:
        return [(a, b) for st, a, b in self.runs if st == "present"]


def _pip(players: Players, name: str) -> PipService:
    service = players.nodes[name].service
    assert isinstance(service, PipService)
    return service


def test_three_links_one_exchange_and_one_deployment_per_side(
        players: Players, substrates: Substrates) -> None:
    deployers = {"pip-a": RecordingDeployer(), "pip-b": RecordingDeployer()}
    players.pip("pip-a", substrates.a, deployer=deployers["pip-a"])
    players.pip("pip-b", substrates.b, deployer=deployers["pip-b"])
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")

    view = sp.request_vnet(parse_vnet(THREE_ACROSS))
    assert view.status == "ready"
    a, b = _pip(players, "pip-a"), _pip(players, "pip-b")
    (sa,), (sb,) = a.core.ledger.slivers(), b.core.ledger.slivers()
    assert len(sa.stitches) == len(sb.stitches) == 3
    for st in sa.stitches:
        other = sb.stitch(st.ref)
        assert other is not None and other.vni == st.vni and st.joined and other.joined
    assert len({st.vni for st in sa.stitches}) == 3
    # provision, then one deployment for all three links on each side
    for name in ("pip-a", "pip-b"):
        assert [state for _, state in deployers[name].runs] == ["present", "present"], name
    sp.delete(view.id)
    for name in ("pip-a", "pip-b"):
        assert deployers[name].runs[-1][1] == "absent"
        assert deployers[name].objects == set()


def test_batch_and_single_proposals_at_a_responder(
        players: Players, substrates: Substrates) -> None:
    deployer = RecordingDeployer(delay=0.3)  # the confirmation waits for this run
    node = players.pip("pip-b", substrates.b, deployer=deployer)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    part = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="p">
      <node id="c" location="paris"/>
      <boundary-link id="k1"><endpoint node="c" interface="e0"/><peer ref="r1"/></boundary-link>
      <boundary-link id="k2"><endpoint node="c" interface="e1"/><peer ref="r2"/></boundary-link>
    </vnet>""")
    vnp.put("/v1/slivers/s1", m.allocate_xml(m.Allocate(part)))
    peers = tuple(m.Peer(ref, "pip-a", "https://127.0.0.1:9", "responder") for ref in ("r1", "r2"))
    vnp.post("/v1/slivers/s1/provision", m.provision_xml(m.Provision(peers)))
    runs = len(deployer.runs)
    initiator = m.StitchEndpoint("initiator", "198.18.9.11")
    pip_a = PlayerClient(node.url, players.creds("pip-a", Role.PIP), expect_name="pip-b")

    with pytest.raises(RemoteError) as err:
        pip_a.post("/v1/stitch", b'<stitches xmlns="urn:vnet:rdl:1" version="1"/>')
    assert err.value.status == 422
    batch = [m.Stitch(ref, vni, "propose", (initiator,))
             for ref, vni in (("r1", 7001), ("r2", 7002))]
    answers = m.stitches_reply(pip_a.post("/v1/stitch", m.stitches_xml(batch)).body)
    assert [(x.ref, x.state, x.vni) for x in answers] == [("r1", "accept", 7001),
                                                         ("r2", "accept", 7002)]
    again = m.stitches_reply(pip_a.post("/v1/stitch", m.stitches_xml(batch)).body)
    assert [(x.ref, x.state, x.vni) for x in again] == [(x.ref, x.state, x.vni)
                                                        for x in answers]
    assert deployer.runs[runs:] == [(deployer.runs[-1][0], "present")]  # both in one run
    (rec,) = _pip(players, "pip-b").core.ledger.slivers()
    assert rec.state.value == "ready" and all(st.joined for st in rec.stitches)
    single = pip_a.post("/v1/stitch", m.stitch_xml(batch[0]))  # repeated, alone
    assert m.stitch_from(m.read(single.body, "stitch")).state == "accept"
    assert len(deployer.runs) == runs + 1
    assert vnp.delete("/v1/slivers/s1").status == 204
    assert deployer.objects == set()


def _stitched_pips(players: Players, substrates: Substrates, initiator: Timed,
                   responder: Timed) -> None:
    players.pip("pip-a", substrates.a, deployer=initiator)  # berlin holds every end a
    players.pip("pip-b", substrates.b, deployer=responder)
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")


def test_both_sides_deploy_their_ends_at_the_same_time(
        players: Players, substrates: Substrates) -> None:
    initiator, responder = Timed(RecordingDeployer(), 1.0), Timed(RecordingDeployer(), 1.0)
    _stitched_pips(players, substrates, initiator, responder)
    sp = players.sp("sp", "vno")
    view = sp.request_vnet(parse_vnet(THREE_ACROSS))
    assert view.status == "ready"
    (_, (a0, a1)), (_, (b0, b1)) = initiator.presents(), responder.presents()
    assert a0 < b1 and b0 < a1, "the two ends' runs did not overlap"
    (sb,) = _pip(players, "pip-b").core.ledger.slivers()
    assert sb.state.value == "ready" and all(st.joined for st in sb.stitches)
    sp.delete(view.id)
    _nothing_left(players, substrates)


def test_responder_failing_after_the_initiator_deployed_rolls_back_both(
        players: Players, substrates: Substrates) -> None:
    initiator = Timed(RecordingDeployer())
    responder = Timed(RecordingDeployer(), delay=1.0, fail_run=2)  # provision, then stitch
    _stitched_pips(players, substrates, initiator, responder)
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(parse_vnet(THREE_ACROSS))
    assert err.value.status == 409 and "502 upstream-failed" in err.value.message
    assert "pip-b" not in err.value.message and substrates.b not in err.value.message
    # the initiator's ends were deployed (before the responder's run ended), then removed
    (_, (_, a1)), (_, (b0, b1)) = initiator.presents(), responder.presents()
    assert a1 < b1 and b0 < a1
    assert [st for st, _, _ in initiator.runs][-1] == "absent"
    assert initiator.inner.objects == set() and responder.inner.objects == set()
    _nothing_left(players, substrates)
