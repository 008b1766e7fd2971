"""The GENI AM API v3 on a PIP over real mutual TLS, driven by geni-lib's client,
on a real lab substrate: Figure 6 allocated, provisioned, acted on and deleted,
with its namespaces and links checked on the substrate. The aggregate serves
VNP certificates, as the PIP's own API does; an SP's only when the PIP's
operator sets `geni_sp_access`."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import xmlrpc.client
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib import paths
from vnetlib.geni import am, schema, urns
from vnetlib.geni.rspec import request_rspec, spec_from_root
from vnetlib.lab import manage
from vnetlib.players.config import ConfigError, PipSection, from_dict
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Credentials, Role
from vnetlib.spec import load_vnet

geni_util = pytest.importorskip("geni.minigcf.util")
amapi3 = pytest.importorskip("geni.minigcf.amapi3")

ROOT = Path(__file__).resolve().parents[2]
FIGURE6 = ROOT / "examples" / "figure6.xml"
SLICE = urns.slice_urn("fig6", "ch.example.net")
V3 = {"geni_rspec_version": {"type": "GENI", "version": "3"}}


@dataclass(frozen=True)
class Cred:
    """What geni-lib's amapi3 functions read of a credential: a file and its type."""

    path: str
    type: str = "geni_sfa"
    version: str = "3"


@dataclass
class Client:
    """geni-lib's AM API v3 calls with one identity (certificate) and credential."""

    url: str
    creds: Credentials
    cred: Cred

    @property
    def tls(self) -> tuple[str, str]:
        return str(self.creds.cert_path), str(self.creds.key_path)

    @property
    def ca(self) -> str:
        return str(self.creds.ca_path)

    def call(self, method: str, *args: Any) -> dict[str, Any]:
        """Methods geni-lib has no v3 function for, through its own transport."""
        body = xmlrpc.client.dumps(args, methodname=method)
        return dict(geni_util._rpcpost(self.url, body, self.tls, self.ca))

    def creds_arg(self) -> list[dict[str, Any]]:
        return [{"geni_type": self.cred.type, "geni_version": self.cred.version,
                 "geni_value": Path(self.cred.path).read_text()}]


@pytest.fixture
def aggregate(players: Players, substrates: Substrates, tmp_path: Path,
              ) -> Iterator[tuple[PipService, Client, am.GeniAggregate]]:
    node = players.pip("pip-g", substrates.a)
    service = node.service
    assert isinstance(service, PipService)
    url = node.url + am.ROUTE
    agg = service.geni  # mounted by every PIP, its URL set by the management node
    assert agg.url == url
    cred = tmp_path / "slice.cred"
    cred.write_text("<signed-credential><credential id='c1'><type>privilege</type>"
                    "</credential></signed-credential>")
    client = Client(url, players.creds("researcher", Role.VNP), Cred(str(cred)))
    yield service, client, agg
    for s in service.core.ledger.slivers():  # nothing of a failed test stays deployed
        service.core.delete(s.owner, s.name)


def ok(result: dict[str, Any]) -> Any:
    assert result["code"]["geni_code"] == 0, result
    return result["value"]


def vnet_namespaces(substrate: str, sliver_id: str) -> list[str]:
    return namespaces(f"vn-{substrate}-{sliver_id}-")


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=20, check=False)


def test_figure6_through_geni_lib(aggregate: tuple[PipService, Client, am.GeniAggregate],
                                  substrates: Substrates) -> None:
    service, c, _ = aggregate
    spec = load_vnet(FIGURE6)
    version = amapi3.getversion(c.url, c.ca, *c.tls, ({},))  # geni-lib dumps `options` as is
    assert ok(version)["geni_api"] == 3
    assert ok(version)["geni_api_versions"] == {"3": c.url}

    ad = ok(c.call("ListResources", c.creds_arg(), V3))
    assert schema.validate_bytes(ad.encode(), "advertisement") == "advertisement"
    assert "berlin" in ad and "london" in ad

    alloc = ok(amapi3.allocate(c.url, c.ca, *c.tls, [c.cred], SLICE,
                               request_rspec(spec).decode(), {}))
    schema.validate_bytes(alloc["geni_rspec"].encode(), "manifest")
    assert {s["geni_allocation_status"] for s in alloc["geni_slivers"]} == {"geni_allocated"}
    (sliver,) = service.core.ledger.slivers()
    assert sliver.owner == "researcher" and sliver.name == "fig6"
    assert vnet_namespaces(substrates.a, sliver.id) == []  # a reservation deploys nothing

    renewed = ok(c.call("Renew", [SLICE], c.creds_arg(), "2099-01-01T00:00:00Z", {}))
    assert len(renewed) == 6

    prov = ok(amapi3.provision(c.url, c.ca, *c.tls, [c.cred], SLICE, {}))
    assert {s["geni_operational_status"] for s in prov["geni_slivers"]} == {"geni_ready"}
    assert vnet_namespaces(substrates.a, sliver.id) == sorted(
        f"vn-{substrates.a}-{sliver.id}-{n.id}" for n in spec.nodes)
    e1 = f"vn-{substrates.a}-{sliver.id}-e1"
    r1 = f"vn-{substrates.a}-{sliver.id}-r1"
    ping = in_ns(e1, "ping", "-c", "1", "-W", "2", "198.19.0.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr

    status = ok(c.call("Status", [SLICE], c.creds_arg(), {}))
    assert status["geni_urn"] == urns.slice_urn("fig6")
    assert {s["geni_allocation_status"] for s in status["geni_slivers"]} == {"geni_provisioned"}

    described = ok(c.call("Describe", [SLICE], c.creds_arg(), V3))
    manifest = described["geni_rspec"].encode()
    schema.validate_bytes(manifest, "manifest")
    assert spec_from_root(schema.parse(manifest)) == spec
    assert "component_id" not in described["geni_rspec"]  # no host is named
    packed = ok(c.call("Describe", [SLICE], c.creds_arg(), dict(V3, geni_compressed=True)))
    unpacked = zlib.decompress(base64.b64decode(packed["geni_rspec"]))
    stamp = re.compile(rb' generated="[^"]*"')  # the time it was written
    assert stamp.sub(b"", unpacked) == stamp.sub(b"", manifest)

    r1_urn = urns.sliver_urn(service.name, sliver.id, "r1")
    stopped = ok(amapi3.poa(c.url, c.ca, *c.tls, [c.cred], [r1_urn], "geni_stop", {}))
    by_node = {s["vnet_node"]: s for s in stopped}
    assert by_node["r1"]["geni_operational_status"] == "geni_notready"
    assert by_node["e1"]["geni_operational_status"] == "geni_ready"
    assert in_ns(e1, "ping", "-c", "1", "-W", "1", "198.19.0.2").returncode != 0
    assert "state UP" not in in_ns(r1, "ip", "-o", "link", "show", "eth0").stdout
    started = ok(amapi3.poa(c.url, c.ca, *c.tls, [c.cred], [r1_urn], "geni_start", {}))
    assert {s["geni_operational_status"] for s in started} == {"geni_ready"}
    ping = in_ns(e1, "ping", "-c", "1", "-W", "2", "198.19.0.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr

    gone = ok(amapi3.delete(c.url, c.ca, *c.tls, [c.cred], [SLICE], {}))
    assert {s["geni_allocation_status"] for s in gone} == {"geni_unallocated"}
    assert vnet_namespaces(substrates.a, sliver.id) == []
    after = c.call("Status", [SLICE], c.creds_arg(), {})
    assert after["code"]["geni_code"] in (am.SEARCHFAILED, am.EXPIRED)


def test_identity_and_credentials(aggregate: tuple[PipService, Client, am.GeniAggregate],
                                  players: Players) -> None:
    service, c, _ = aggregate
    request = request_rspec(load_vnet(FIGURE6)).decode()
    no_creds = c.call("Allocate", SLICE, [], request, {})
    assert no_creds["code"]["geni_code"] == am.FORBIDDEN
    bad = c.call("Allocate", SLICE, [{"geni_type": "geni_sfa", "geni_version": "3",
                                      "geni_value": "<not xml"}], request, {})
    assert bad["code"]["geni_code"] == am.BADARGS
    assert service.core.ledger.slivers() == []

    ok(c.call("Allocate", SLICE, c.creds_arg(), request, {}))
    # another identity, with a perfectly good credential, finds nothing of it
    other = Client(c.url, players.creds("intruder", Role.VNP), c.cred)
    assert other.call("Status", [SLICE], c.creds_arg(), {})["code"]["geni_code"] == \
        am.SEARCHFAILED
    assert other.call("Delete", [SLICE], c.creds_arg(), {})["code"]["geni_code"] == \
        am.SEARCHFAILED
    # roles the aggregate does not serve are refused: a PIP, and by default an
    # SP (whose requests go through its VNO and a VNP, with their price limits)
    pip = Client(c.url, players.creds("pip-x", Role.PIP), c.cred)
    assert pip.call("ListResources", c.creds_arg(), V3)["code"]["geni_code"] == am.FORBIDDEN
    sp = Client(c.url, players.creds("sp-x", Role.SP), c.cred)
    other_slice = urns.slice_urn("bypass")
    for method, args in (("ListResources", (c.creds_arg(), V3)),
                         ("Allocate", (other_slice, c.creds_arg(), request, {})),
                         ("Provision", ([other_slice], c.creds_arg(), {})),
                         ("Status", ([SLICE], c.creds_arg(), {})),
                         ("Delete", ([SLICE], c.creds_arg(), {}))):
        refused = sp.call(method, *args)
        assert refused["code"]["geni_code"] == am.FORBIDDEN, (method, refused)
        assert "serves vnp" in refused["output"]
    assert {s.name for s in service.core.ledger.slivers()} == {"fig6"}
    # the same slice twice
    again = c.call("Allocate", SLICE, c.creds_arg(), request, {})
    assert again["code"]["geni_code"] == am.ALREADYEXISTS
    assert c.call("Status", SLICE)["code"]["geni_code"] == am.BADARGS  # arguments missing
    # Shutdown of a reservation releases it
    assert ok(c.call("Shutdown", SLICE, c.creds_arg(), {})) is True
    assert [s.state.value for s in service.core.ledger.slivers()] in ([], ["deleted"])


def test_bad_calls_are_answered_in_geni_terms(
        aggregate: tuple[PipService, Client, am.GeniAggregate]) -> None:
    _, c, _ = aggregate
    invalid = c.call("Allocate", SLICE, c.creds_arg(), "<rspec/>", {})
    assert invalid["code"]["geni_code"] == am.BADARGS
    assert c.call("ListResources", c.creds_arg(), {})["code"]["geni_code"] == am.BADARGS
    wrong = c.call("ListResources", c.creds_arg(),
                   {"geni_rspec_version": {"type": "ProtoGENI", "version": "2"}})
    assert wrong["code"]["geni_code"] == am.BADVERSION
    assert c.call("Describe", [SLICE], c.creds_arg(), "x")["code"]["geni_code"] == am.BADARGS
    with pytest.raises(xmlrpc.client.Fault):
        c.call("CreateSliver", SLICE, c.creds_arg(), "", [])


def test_sp_access_only_when_the_pip_allows_it(players: Players, substrates: Substrates,
                                               tmp_path: Path) -> None:
    """`geni_sp_access = true` in [pip]: an SP's certificate may allocate and
    delete directly; the option is a boolean, not a truthy string."""
    base = PipSection(substrate=str(paths.substrate_dir(substrates.a) / "substrate.xml"),
                      inventory=str(manage.inventory_path(substrates.a)))
    node = players.start(players.config("pip-open", Role.PIP,
                                        pip=replace(base, geni_sp_access=True)))
    service = node.service
    assert isinstance(service, PipService)
    assert service.geni.roles == am.SP_ROLES
    cred = tmp_path / "slice.cred"
    cred.write_text("<signed-credential><credential/></signed-credential>")
    sp = Client(node.url + am.ROUTE, players.creds("sp-direct", Role.SP), Cred(str(cred)))
    alloc = ok(amapi3.allocate(sp.url, sp.ca, *sp.tls, [sp.cred], SLICE,
                               request_rspec(load_vnet(FIGURE6)).decode(), {}))
    assert {s["geni_allocation_status"] for s in alloc["geni_slivers"]} == {"geni_allocated"}
    (sliver,) = service.core.ledger.slivers()
    assert sliver.owner == "sp-direct"
    ok(amapi3.delete(sp.url, sp.ca, *sp.tls, [sp.cred], [SLICE], {}))
    assert [s.state.value for s in service.core.ledger.slivers()] in ([], ["deleted"])
    with pytest.raises(ConfigError, match="geni_sp_access"):
        from_dict({"name": "p", "role": "pip", "store": "sqlite://", "pki": "/x",
                   "pip": {"substrate": "s.xml", "inventory": "i.yml",
                           "geni_sp_access": "false"}})


def test_geni_lib_without_content_type(players: Players, substrates: Substrates) -> None:
    node = players.pip("pip-h", substrates.a)
    assert isinstance(node.service, PipService)
    creds = players.creds("sp-version", Role.SP)  # GetVersion: any role
    result = amapi3.getversion(node.url + am.ROUTE, str(creds.ca_path), str(creds.cert_path),
                               str(creds.key_path), ({},))
    assert result["code"]["geni_code"] == 0


def test_manifest_and_advertisement_of_the_direct_path(substrates: Substrates) -> None:
    """`vnet geni rspec VNET --kind manifest` and `SUBSTRATE --kind advertisement`
    on a VNet made with the direct path (`vnet up --substrate`)."""
    from vnetlib import instantiate

    vnet = shutil.which("vnet", path=str(Path(sys.executable).parent)) or "vnet"

    def geni(*args: str) -> dict[str, Any]:
        out = subprocess.run([vnet, "geni", "rspec", *args, "--json"], capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    made = instantiate.instantiate(FIGURE6, substrates.b)
    try:
        manifest = geni(made.vnet_id, "--kind", "manifest")
        assert manifest["substrate"] == substrates.b
        doc = manifest["document"].encode()
        schema.validate_bytes(doc, "manifest")
        assert spec_from_root(schema.parse(doc)) == load_vnet(FIGURE6)
        assert 'status="ready"' in manifest["document"]
        ad = geni(substrates.b, "--kind", "advertisement")["document"]
        schema.validate_bytes(ad.encode(), "advertisement")
        assert sum(float(c) for c in re.findall(r'<vnet:site [^>]*cpu="([0-9.]+)"', ad)) == 2.0
    finally:
        instantiate.destroy(made.vnet_id)
    assert namespaces(f"vn-{substrates.b}-") == []
