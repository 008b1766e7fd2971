"""Writing RDL v1: dumps are schema-valid and read back to equal objects."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lxml import etree

from vnetlib.spec import dump_substrate, dump_vnet, load, parse_substrate, parse_vnet, schema
from vnetlib.spec.model import (
    ConsoleKind,
    Constraints,
    Interface,
    LinkEndpoint,
    NodeKind,
    ServiceRequirements,
    Substrate,
    SubstrateHost,
    SubstrateLink,
    Switch,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)
from vnetlib.spec.serialize import number

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "examples").glob("*.xml")) + sorted(
    (Path(__file__).parent / "data" / "spec").glob("full-*.xml")
)


def dump(x: VNetSpec | Substrate) -> bytes:
    return dump_vnet(x) if isinstance(x, VNetSpec) else dump_substrate(x)


def reparse(x: VNetSpec | Substrate) -> VNetSpec | Substrate:
    return parse_vnet(dump(x)) if isinstance(x, VNetSpec) else parse_substrate(dump(x))


def assert_round_trip(x: VNetSpec | Substrate) -> None:
    data = dump(x)
    assert schema().validate(etree.fromstring(data).getroottree()), schema().error_log
    again = reparse(x)
    assert again == x
    assert dump(again) == data


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_documents_round_trip(path: Path) -> None:
    assert_round_trip(load(path))


def test_lines_and_source_are_not_compared() -> None:
    spec = load(ROOT / "examples" / "figure6.xml")
    again = reparse(spec)
    assert isinstance(again, VNetSpec)
    assert again.source == "<string>" and again == spec
    assert [n.line for n in again.nodes] != [n.line for n in spec.nodes]


def test_dump_is_namespaced_utf8_with_declaration() -> None:
    data = dump_vnet(VNetSpec("x", nodes=(VirtualNode("a"),)))
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n")
    assert b'<vnet xmlns="urn:vnet:rdl:1" version="1" name="x">' in data


def test_text_is_escaped() -> None:
    spec = VNetSpec(
        "x",
        nodes=(VirtualNode("a"),),
        service=ServiceRequirements(description='a < b & "c" ünïcode'),
    )
    assert_round_trip(spec)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (100.5, "100.5"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
        (0.0, "0"),
        (2.5e3, "2500"),
    ],
)
def test_numbers_are_plain_decimals(value: float, text: str) -> None:
    assert number(value) == text
    assert float(text) == value


# ------------------------------------------------------- generated objects


def _vnet(rng: random.Random, index: int) -> VNetSpec:
    kinds = list(NodeKind)
    nodes = []
    for i in range(rng.randint(1, 6)):
        kind = rng.choice(kinds)
        consoles = (
            (ConsoleKind.SERIAL,)
            if kind is NodeKind.NETNS
            else tuple(rng.sample(list(ConsoleKind), rng.randint(0, 2)))
        )
        nodes.append(
            VirtualNode(
                f"n{i}",
                cpu=rng.choice([0.25, 1.0, 3.0]),
                memory_mb=rng.randint(1, 8192),
                disk_gb=rng.choice([0.0, 1.5, 20.0]),
                image=rng.choice([None, "debian-12"]),
                kind=kind,
                location=rng.choice([None, "berlin"]),
                consoles=consoles if rng.random() < 0.7 else (),
                forwarding=rng.random() < 0.5,
            )
        )
    used: dict[str, int] = {}
    links = []
    for j in range(rng.randint(0, 6) if len(nodes) > 1 else 0):
        a, b = rng.sample([n.id for n in nodes], 2)
        ends = []
        for k, node in enumerate((a, b)):
            used[node] = used.get(node, -1) + 1
            addresses = (f"10.{index}.{j}.{k + 1}/30",) if rng.random() < 0.8 else ()
            ends.append(LinkEndpoint(node, Interface(f"eth{used[node]}", addresses)))
        links.append(
            VirtualLink(
                f"l{j}",
                ends[0],
                ends[1],
                bandwidth_mbps=rng.choice([1.0, 99.5]),
                latency_ms=rng.choice([None, 0.0, 12.25]),
            )
        )
    return VNetSpec(
        f"gen{index}",
        nodes=tuple(nodes),
        links=tuple(links),
        constraints=Constraints(
            max_price=rng.choice([None, 0.0, 42.5]),
            allowed_locations=("berlin",) * rng.randint(0, 1),
            path_splitting=rng.random() < 0.5,
            max_pips=rng.choice([None, 1, 3]),
        ),
        service=ServiceRequirements(
            availability=rng.choice([None, 0.999]),
            console_access=tuple(rng.sample(list(ConsoleKind), rng.randint(0, 2))),
            description=rng.choice([None, "", "svc"]),
        ),
    )


def _substrate(rng: random.Random, index: int) -> Substrate:
    names = [f"h{i}" for i in range(1, rng.randint(1, 5) + 1)]
    hosts = tuple(
        SubstrateHost(
            name,
            cpu=rng.choice([0.5, 8.0]),
            memory_mb=rng.randint(1, 65536),
            disk_gb=rng.choice([0.0, 100.0]),
            location=rng.choice([None, "paris"]),
            data_address=f"10.0.0.{i + 10}" if rng.random() < 0.8 else None,
            mgmt_address=f"10.1.0.{i + 10}" if rng.random() < 0.8 else None,
            node_kinds=tuple(rng.sample(list(NodeKind), rng.randint(1, 3))),
        )
        for i, name in enumerate(names)
    )
    switch = Switch(
        "sw",
        rng.choice(["linux-bridge", "ovs"]),
        tuple(rng.sample(names, rng.randint(0, len(names)))),
    )
    links = tuple(
        SubstrateLink(n, "sw", bandwidth_mbps=1000.0, latency_ms=rng.choice([0.0, 0.1]))
        for n in names
    )
    return Substrate(
        f"sub{index}",
        hosts=hosts,
        links=links,
        switch=switch if rng.random() < 0.8 else None,
        data_network=rng.choice([None, "10.0.0.0/24"]),
        mgmt_network=rng.choice([None, "10.1.0.0/24"]),
        encapsulations=tuple(rng.sample(["vxlan", "gre", "ipip"], rng.randint(1, 3))),
    )


@pytest.mark.parametrize("seed", range(40))
def test_generated_vnets_round_trip(seed: int) -> None:
    assert_round_trip(_vnet(random.Random(seed), seed))


@pytest.mark.parametrize("seed", range(40))
def test_generated_substrates_round_trip(seed: int) -> None:
    sub = _substrate(random.Random(seed), seed)
    if sub.switch is None:
        sub = Substrate(
            sub.name, sub.hosts, (), None, sub.data_network, sub.mgmt_network, sub.encapsulations
        )
    assert_round_trip(sub)


def test_empty_service_description_round_trips() -> None:
    spec = VNetSpec("x", nodes=(VirtualNode("a"),), service=ServiceRequirements(description=""))
    assert_round_trip(spec)
