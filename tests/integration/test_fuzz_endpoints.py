"""Property-based fuzzing of every endpoint of every player, through the real
interface code (`Service.dispatch`, the handlers, the stores), without sockets.

For every route of the PIP, VNP and VNO: random bytes, malformed XML, hostile
XML (entity expansion, external entities, deep nesting, huge numbers, unicode,
whitespace in names) and schema-valid documents with random values built with
the writers of `vnetlib.players.messages`. Properties: no answer is a 500,
every answer comes within CALL_BOUND seconds, and a refused request (4xx/5xx)
leaves the player's store as it was.

The PIP deploys through a recording deployer (nothing reaches a host), on a
substrate that exists only as its description; the VNP's and the VNO's
upstreams are unreachable. `build_services` is the one place that builds the
players: adapt it when their constructors change.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnetlib.core.deployer import RecordingDeployer
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.players import messages as m
from vnetlib.players.config import PipSection, PlayerConfig, Upstream, VnoSection, VnpSection
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Identity, LabCA, Role
from vnetlib.players.server import Route, Service
from vnetlib.players.stores import PlayerStore
from vnetlib.players.vno import VnoService
from vnetlib.players.vnp import VnpService
from vnetlib.spec import dump_substrate

CALL_BOUND = 2.0  # seconds for one request, refused or not
EXAMPLES = 100  # drawn bodies per player, each sent to every route
UNREACHABLE = "https://127.0.0.1:9"  # discard port: nothing listens, refused at once
ROLES_OF = {"pip": Role.PIP, "vnp": Role.VNP, "vno": Role.VNO}


@dataclass
class Players:
    """The services, a function per service that snapshots its state, and the
    PIP's recording deployer."""

    services: dict[str, Service]
    state: dict[str, Callable[[], object]]
    deployer: RecordingDeployer

    def close(self) -> None:
        for service in self.services.values():
            close: Callable[[], None] | None = getattr(service, "close", None)
            if close is not None:
                close()


def _store_state(store: PlayerStore) -> Callable[[], object]:
    def state() -> object:
        return (sorted((r.id, r.owner, r.name, json.dumps(r.data, sort_keys=True))
                       for r in store.all()))
    return state


def _ledger_state(pip: PipService) -> Callable[[], object]:
    def state() -> object:
        ledger = pip.core.ledger
        return sorted(repr(s) for s in ledger.slivers()), sorted(ledger.used_vnis())
    return state


def write_substrate(directory: Path) -> Path:
    """A lab substrate's description (no kernel objects: deployment is recorded)."""
    config = LabConfig(name=f"fz{secrets.token_hex(2)}", hosts=2,
                       data_network="198.18.77.0/24", mgmt_network="198.18.177.0/24",
                       locations=("berlin", "london"))
    path = directory / "substrate.xml"
    path.write_bytes(dump_substrate(substrate_of(config)))
    return path


def build_services(root: Path, ca: LabCA) -> Players:
    """The three players' services as `vnet serve` builds them, in-process: the
    one place to adapt when their constructors change."""
    deployer = RecordingDeployer()

    def config(name: str, role: Role, **sections: object) -> PlayerConfig:
        base = PlayerConfig(name=name, role=role, store=f"sqlite:///{root / name}.db",
                            pki=ca.directory)
        return dataclasses.replace(base, **sections)  # type: ignore[arg-type]

    pip_config = config("pip-f", Role.PIP, pip=PipSection(
        str(write_substrate(root)), str(root / "inventory.yml"), 1.0, 0.1, 600.0))
    pip = PipService(pip_config, ca.issue("pip-f", Role.PIP), deployer=deployer, reaper=False)
    vnp = VnpService(config("vnp-f", Role.VNP, vnp=VnpSection(
        (Upstream("pip-f", UNREACHABLE),), timeout=0.5)), ca.issue("vnp-f", Role.VNP))
    vno = VnoService(config("vno-f", Role.VNO, vno=VnoSection(Upstream("vnp-f", UNREACHABLE),
                                                              timeout=0.5)),
                     ca.issue("vno-f", Role.VNO))
    return Players({"pip": pip, "vnp": vnp, "vno": vno},
                   {"pip": _ledger_state(pip), "vnp": _store_state(vnp.store),
                    "vno": _store_state(vno.store)}, deployer)


@pytest.fixture(scope="module")
def players(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Players]:
    root = tmp_path_factory.mktemp("fuzz")
    ca = LabCA.create(root / "ca", "fuzz lab")
    built = build_services(root, ca)
    try:
        yield built
    finally:
        built.close()


# -- what a request may hold -----------------------------------------------------------

NS = 'xmlns="urn:vnet:rdl:1"'
HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "blank": b"  \n\t ",
    "not xml": b"GET / HTTP/1.1\r\n\r\n",
    "truncated": b"<stitch " + NS.encode(),
    "binary": bytes(range(256)),
    "bom and utf-16": "<renew/>".encode("utf-16"),
    "billion laughs": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                       + b"".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">'
                                  .replace("&lol0;", "&lol;").encode() for i in range(1, 10))
                       + b']><renew ' + NS.encode() + b' expires-in="&lol9;"/>'),
    "external entity": (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM '
                        b'"file:///etc/passwd">]><renew ' + NS.encode() + b' expires-in="&x;"/>'),
    "external dtd": (b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/x.dtd"><renew ' + NS.encode()
                     + b' expires-in="1"/>'),
    "deep nesting": b"<a>" * 50_000 + b"</a>" * 50_000,
    "deep valid root": (b"<action " + NS.encode() + b' name="start">' + b"<arg>" * 3000
                        + b"</arg>" * 3000 + b"</action>"),
    "wide": b"<provision " + NS.encode() + b">" + b"<peer/>" * 20_000 + b"</provision>",
    "huge vni": (f'<stitch {NS} version="1" ref="x" encapsulation="vxlan" vni="{2**70}" '
                 'state="propose"><endpoint role="initiator" address="198.18.1.1"/></stitch>'
                 ).encode(),
    "direct-path vni": (f'<stitch {NS} version="1" ref="x" encapsulation="vxlan" vni="7" '
                        'state="propose"><endpoint role="initiator" address="198.18.1.1"/>'
                        "</stitch>").encode(),
    "infinite price": f'<renew {NS} expires-in="{"9" * 400}"/>'.encode(),
    "infinite cpu": (f'<allocate {NS}><vnet version="1" name="x"><node id="a" '
                     f'cpu="{"9" * 400}"/></vnet></allocate>').encode(),
    "name with newline": (f'<allocate {NS}><vnet version="1" name="x"><node id="a&#10;"/>'
                          "</vnet></allocate>").encode(),
    "unicode": f'<quote-request {NS}><vnet version="1" name="ü"><node id="ä𝔘"/></vnet>'
               "</quote-request>".encode(),
    "nul": b"<renew\x00/>",
    "wrong namespace": b'<renew xmlns="urn:other" expires-in="1"/>',
}

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=16)
wild_text = st.text(max_size=40)
amounts = st.one_of(st.floats(min_value=0, max_value=1e9, allow_nan=False),
                    st.sampled_from([0.0, 1e-300, 1e300]))
ips = st.one_of(st.ip_addresses().map(str), st.sampled_from(
    ["198.18.77.11", "0.0.0.0", "255.255.255.255", "::", "fe80::1", "1.2.3"]))


@st.composite
def vnet_texts(draw: st.DrawFn) -> str:
    """A small VNet, valid or not, through the RDL text (so ids can be anything)."""
    count = draw(st.integers(1, 4))
    ids = [draw(st.one_of(names, wild_text)) for _ in range(count)]
    nodes = "".join(
        f'<node id="{_attr(i)}" cpu="{draw(st.sampled_from(["1", "0.5", "-1", "1e3", "9" * 30]))}"'
        f' memory="{draw(st.sampled_from(["64", "0", str(2**70)]))}"/>' for i in ids)
    links = "".join(
        f'<link id="l{k}"><endpoint node="{_attr(ids[k % count])}" interface="e{k}"/>'
        f'<endpoint node="{_attr(ids[(k + 1) % count])}" interface="e{k}"/></link>'
        for k in range(draw(st.integers(0, 3))))
    return f'<vnet {NS} version="1" name="{_attr(draw(names))}">{nodes}{links}</vnet>'


def _attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;"))


def _with_vnet(tag: str, attrs: str, vnet: str) -> bytes:
    return f"<{tag} {NS} {attrs}>{vnet}</{tag}>".encode()


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Schema-valid (or nearly) documents of every kind, with random values."""
    kind = draw(st.sampled_from(["stitch", "renew", "action", "provision", "allocate",
                                 "quote-request", "service-request", "vnet", "advertisement"]))
    if kind == "stitch":
        endpoints = tuple(m.StitchEndpoint(draw(st.sampled_from(["initiator", "responder"])),
                                           draw(ips), draw(st.integers(1, 65535)))
                          for _ in range(draw(st.integers(1, 2))))
        return m.stitch_xml(m.Stitch(
            draw(st.one_of(names, st.just("x"))),
            draw(st.one_of(st.integers(1, 2**24 - 1), st.integers(-5, 2**80))),
            draw(st.sampled_from(["propose", "accept", "counter", "reject"])), endpoints,
            draw(st.sampled_from(["vxlan", "gre"])), draw(st.none() | wild_text.map(m.xml_text)),
            draw(st.none() | wild_text.map(m.xml_text))))
    if kind == "renew":
        return m.renew_xml(draw(amounts))
    if kind == "action":
        return m.action_xml(m.Action(draw(st.sampled_from(["start", "exec"])),
                                     draw(st.none() | names),
                                     tuple(draw(st.lists(wild_text.map(m.xml_text),
                                                         max_size=3))),
                                     draw(st.none() | amounts)))
    if kind == "provision":
        peers = tuple(m.Peer(draw(names), draw(names), draw(st.sampled_from(
            [UNREACHABLE, "https://x", "http://no"])), draw(st.sampled_from(
                ["initiator", "responder"]))) for _ in range(draw(st.integers(0, 2))))
        return m.provision_xml(m.Provision(peers))
    if kind == "advertisement":
        return m.advertisement_xml(m.Advertisement(draw(names), (m.Site(
            draw(names), draw(amounts), draw(amounts), draw(amounts)),)))
    vnet = draw(vnet_texts())
    if kind == "vnet":
        return vnet.encode()
    if kind == "allocate":
        price = draw(st.none() | amounts)
        seconds = draw(st.none() | st.floats(min_value=0.001, max_value=1e6))
        attrs = " ".join(a for a in (
            "" if price is None else f'price="{m.number(price)}"',
            "" if seconds is None else f'expires-in="{m.number(seconds)}"') if a)
        return _with_vnet("allocate", attrs, vnet)
    if kind == "quote-request":
        bid = draw(st.none() | amounts)
        return _with_vnet("quote-request", "" if bid is None else f'bid="{m.number(bid)}"',
                          vnet)
    return _with_vnet("service-request", "", vnet)


bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(sorted(HOSTILE.values())),
    wild_text.map(lambda t: f"<{t}".encode("utf-8", "surrogatepass")),
    documents(),
    documents(),
)


# -- the properties --------------------------------------------------------------------


def fill(route: Route, value: str) -> str:
    return "/".join(value if part.startswith("{") else part for part in route.pattern.split("/"))


def call(players: Players, player: str, method: str, path: str, identity: Identity,
         body: bytes) -> int:
    """One request; asserts the properties and returns the status."""
    service, state = players.services[player], players.state[player]
    before = state()
    start = time.monotonic()
    outcome = service.dispatch(method, path, identity, body)
    took = time.monotonic() - start
    where = f"{player} {method} {path} ({len(body)} bytes: {body[:80]!r})"
    assert outcome.status != 500, f"{where}: {outcome.body[:300]!r}"
    assert took < CALL_BOUND, f"{where}: {took:.2f} s"
    if outcome.status >= 400:
        assert state() == before, f"{where}: refused with {outcome.status} but the " \
                                  "state changed"
    return outcome.status


def caller(player: str, route: Route) -> Identity:
    roles = sorted(route.roles or {Role.VNP}, key=lambda r: r.value)
    return Identity(f"fz-{roles[0].value}", roles[0])


PLAYERS = sorted(ROLES_OF)


@pytest.mark.parametrize("player", PLAYERS)
@pytest.mark.parametrize("body", sorted(HOSTILE), ids=str)
def test_every_route_refuses_hostile_bodies_without_a_500(
        players: Players, player: str, body: str) -> None:
    for route in players.services[player].routes:
        call(players, player, route.method, fill(route, "s1"), caller(player, route),
             HOSTILE[body])


@pytest.mark.parametrize("player", PLAYERS)
def test_fuzzed_requests_to_every_route_never_answer_500(players: Players, player: str) -> None:
    service = players.services[player]
    seen: set[str] = set()

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        """One drawn body, path value and stranger, sent to every route."""
        value = data.draw(st.one_of(names, st.sampled_from(["s1", "..", "a.b~c"])),
                          label="path value")
        stranger = data.draw(st.builds(Identity, names, st.sampled_from(list(Role))),
                             label="stranger")
        body = data.draw(bodies, label="body")
        for route in service.routes:
            identity = stranger if data.draw(st.booleans(), label="as stranger") else \
                caller(player, route)
            seen.add(f"{route.method} {route.pattern}")
            call(players, player, route.method, fill(route, value), identity, body)

    one()
    assert seen == {f"{r.method} {r.pattern}" for r in service.routes}


def test_a_valid_sliver_runs_through_the_pip_and_refusals_leave_it_alone(
        players: Players) -> None:
    """The PIP's happy path with the recording deployer, then hostile stitching
    and actions against the live sliver: refused, and the sliver unchanged."""
    vnp = Identity("fz-vnp", Role.VNP)
    spec = (f'<allocate {NS}><vnet version="1" name="ok"><node id="a"/><node id="b"/>'
            '<link id="l"><endpoint node="a" interface="e0"/><endpoint node="b" '
            'interface="e0"/></link></vnet></allocate>').encode()
    assert call(players, "pip", "PUT", "/v1/slivers/live", vnp, spec) == 201
    assert call(players, "pip", "POST", "/v1/slivers/live/provision", vnp,
                m.provision_xml(m.Provision())) == 200
    assert players.deployer.runs[-1][1] == "present"
    for body in (HOSTILE["huge vni"], HOSTILE["direct-path vni"]):
        assert call(players, "pip", "POST", "/v1/stitch", Identity("pip-x", Role.PIP),
                    body) == 422
    for name in ("infinite price", "billion laughs", "deep nesting"):
        assert call(players, "pip", "POST", "/v1/slivers/live/renew", vnp,
                    HOSTILE[name]) in (400, 422)
    assert call(players, "pip", "DELETE", "/v1/slivers/live", vnp, b"") == 204
    assert players.deployer.runs[-1][1] == "absent"
