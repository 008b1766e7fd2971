"""Interface 4 at a responder, over real TLS: only the named peer may stitch, a
VNI taken here is countered, an accepted proposal deploys the local segment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.integration.players_fixtures import Players, Substrates
from vnetlib.deploy.ansible import Progress
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.spec import parse_vnet

PART = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="p">
  <node id="c" location="paris"/>
  <boundary-link id="bc"><endpoint node="c" interface="e0"/><peer ref="xref1"/></boundary-link>
</vnet>""")


def test_only_the_named_peer_stitches_and_taken_vnis_are_countered(
        players: Players, substrates: Substrates) -> None:
    deployed: list[tuple[str, Mapping[str, Any]]] = []

    class Recorder:
        def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
                  progress: Progress | None = None) -> None:
            deployed.append((state, plan))

    node = players.pip("pip-b", substrates.b, deployer=Recorder())
    service = node.service
    assert isinstance(service, PipService)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    vnp.put("/v1/slivers/s1", m.allocate_xml(m.Allocate(PART)))
    peer = m.Peer("xref1", "pip-a", "https://127.0.0.1:9", "responder")
    manifest = m.manifest_from(m.read(vnp.post(
        "/v1/slivers/s1/provision", m.provision_xml(m.Provision((peer,)))).body, "sliver"))
    assert manifest.status == "provisioned"
    assert manifest.boundary == (m.BoundaryState("xref1", "bc", False),)

    initiator = m.StitchEndpoint("initiator", "198.18.9.11")
    (rec,) = service.core.ledger.slivers()
    taken = service.core.ledger.allocate_vnis("other", ["l"])["l"]

    def propose(name: str, role: Role, ref: str = "xref1", vni: int = taken) -> m.Stitch:
        client = PlayerClient(node.url, players.creds(name, role), expect_name="pip-b")
        reply = client.post("/v1/stitch", m.stitch_xml(m.Stitch(ref, vni, "propose",
                                                                (initiator,))))
        return m.stitch_from(m.read(reply.body, "stitch"))

    for name, role in (("pip-x", Role.PIP), ("vnp", Role.VNP)):
        with pytest.raises(RemoteError) as err:  # only the named peer finds the link
            propose(name, role)
        assert err.value.status == 404
    with pytest.raises(RemoteError) as err:
        propose("pip-a", Role.PIP, ref="xnone")
    assert err.value.status == 404
    with pytest.raises(RemoteError) as err:
        PlayerClient(node.url, players.creds("sp", Role.SP)).post("/v1/stitch", b"<x/>")
    assert err.value.status == 403

    counter = propose("pip-a", Role.PIP)
    assert counter.state == "counter" and counter.vni != taken
    accepted = propose("pip-a", Role.PIP, vni=counter.vni)
    here = service.core.substrate.host(rec.embedding.node_map["c"]).data_address
    assert accepted.state == "accept" and accepted.vni == counter.vni
    assert accepted.endpoint("responder") == m.StitchEndpoint("responder", str(here))
    state, plan = deployed[-1]
    (host,) = plan["hosts"].values()
    tunnel = host["links"][0]["tunnel"]
    assert state == "present" and (tunnel["vni"], tunnel["remote"], tunnel["local"]) == (
        counter.vni, "198.18.9.11", here)
    runs = len(deployed)
    assert propose("pip-a", Role.PIP, vni=counter.vni).state == "accept"  # idempotent
    assert len(deployed) == runs  # a repeated proposal deploys nothing again
    manifest = m.manifest_from(m.read(vnp.get("/v1/slivers/s1").body, "sliver"))
    assert manifest.status == "ready" and manifest.boundary[0].vni == counter.vni
    assert vnp.delete("/v1/slivers/s1").status == 204
    assert deployed[-1][0] == "absent" and service.core.ledger.used_vnis() == {taken}
