"""Reading RDL v1 documents: the model they give, and the errors they raise.

Invalid documents mark the line an error must name with ``<!-- here -->``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vnetlib.spec import (
    SpecError,
    SpecErrors,
    load,
    load_substrate,
    load_vnet,
    parse,
    parse_substrate,
    parse_vnet,
)
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

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "spec"
EXAMPLES = sorted((ROOT / "examples").glob("*.xml"))
NS = 'xmlns="urn:vnet:rdl:1" version="1"'


def vnet_doc(body: str) -> str:
    return f'<vnet {NS} name="t">\n{body}\n</vnet>\n'


def substrate_doc(body: str) -> str:
    return f'<substrate {NS} name="t">\n{body}\n</substrate>\n'


def marked_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if "<!-- here -->" in line)


def only_error(text: str, reader: object = parse, source: str = "t.xml") -> SpecError:
    with pytest.raises(SpecErrors) as caught:
        reader(text, source)  # type: ignore[operator]
    assert len(caught.value.errors) == 1, str(caught.value)
    return caught.value.errors[0]


# ------------------------------------------------------------------ valid


def test_full_vnet_parses_to_the_expected_model() -> None:
    spec = load_vnet(DATA / "full-vnet.xml")
    assert spec == VNetSpec(
        name="full",
        service=ServiceRequirements(
            availability=0.99,
            console_access=(ConsoleKind.SERIAL, ConsoleKind.VNC),
            description="A VPN for three offices.",
        ),
        constraints=Constraints(
            max_price=100.5, allowed_locations=("berlin", "paris"), path_splitting=True, max_pips=2
        ),
        nodes=(
            VirtualNode(
                "gw",
                cpu=2.0,
                memory_mb=512,
                disk_gb=4.5,
                image="debian-12",
                kind=NodeKind.QEMU,
                location="berlin",
                consoles=(ConsoleKind.SERIAL, ConsoleKind.VNC),
                forwarding=True,
            ),
            VirtualNode("host_a", kind=NodeKind.XEN, forwarding=False),
            VirtualNode("host-b"),
        ),
        links=(
            VirtualLink(
                "uplink-1",
                LinkEndpoint("gw", Interface("eth0", ("198.19.0.1/30", "2001:db8::1/64"))),
                LinkEndpoint("host_a", Interface("eth0", ("198.19.0.2/30", "2001:db8::2/64"))),
                bandwidth_mbps=100.0,
                latency_ms=5.0,
            ),
            VirtualLink(
                "l2",
                LinkEndpoint("gw", Interface("eth1.10")),
                LinkEndpoint("host-b", Interface("eth0")),
            ),
        ),
    )
    assert spec.source == str(DATA / "full-vnet.xml")
    # libxml2 gives a start tag that spans lines the line where it ends
    assert [n.line for n in spec.nodes] == [14, 18, 19]
    assert [link.line for link in spec.links] == [20, 30]


def test_full_substrate_parses_to_the_expected_model() -> None:
    sub = load_substrate(DATA / "full-substrate.xml")
    assert sub == Substrate(
        name="pip-a",
        data_network="10.10.0.0/24",
        mgmt_network="10.20.0.0/24",
        encapsulations=("vxlan", "gre"),
        switch=Switch("core", kind="ovs", ports=("x1", "x2")),
        hosts=(
            SubstrateHost(
                "x1",
                cpu=16.0,
                memory_mb=65536,
                disk_gb=500.0,
                location="berlin",
                data_address="10.10.0.1",
                mgmt_address="10.20.0.1",
                node_kinds=(NodeKind.NETNS, NodeKind.XEN),
            ),
            SubstrateHost("x2", cpu=0.5, memory_mb=256),
        ),
        links=(
            SubstrateLink("x1", "core", bandwidth_mbps=10000.0, latency_ms=0.05),
            SubstrateLink("x2", "x1", bandwidth_mbps=1000.0),
        ),
    )
    assert [h.line for h in sub.hosts] == [13, 17]


def test_minimal_vnet_takes_the_model_defaults() -> None:
    spec = parse_vnet(vnet_doc('<node id="a"/>'))
    assert spec == VNetSpec("t", nodes=(VirtualNode("a"),))
    assert spec.source == "<string>"


def test_substrate_without_kinds_or_encapsulation_takes_the_defaults() -> None:
    sub = parse_substrate(substrate_doc('<host name="h" cpu="1" memory="64"/>'))
    assert sub.encapsulations == ("vxlan",)
    assert sub.hosts[0].node_kinds == (NodeKind.NETNS,)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    assert isinstance(load(path), VNetSpec | Substrate)


def test_figure6_is_the_documented_topology() -> None:
    spec = load_vnet(ROOT / "examples" / "figure6.xml")
    assert spec.name == "figure6"
    assert [n.id for n in spec.nodes] == ["e1", "r1", "r2", "r3", "r4", "e2"]
    assert all(n.kind is NodeKind.NETNS and n.cpu == 1 and n.memory_mb == 128 for n in spec.nodes)
    assert [n.consoles for n in spec.nodes if n.id.startswith("r")] == [(ConsoleKind.SERIAL,)] * 4
    pairs = [(link.id, *link.nodes) for link in spec.links]
    assert pairs == [
        ("l1", "e1", "r1"),
        ("l2", "r1", "r2"),
        ("l3", "r1", "r3"),
        ("l4", "r2", "r3"),
        ("l5", "r2", "r4"),
        ("l6", "r3", "r4"),
        ("l7", "r4", "e2"),
    ]
    for i, link in enumerate(spec.links):
        assert link.a.interface.addresses == (f"198.19.0.{4 * i + 1}/30",)
        assert link.b.interface.addresses == (f"198.19.0.{4 * i + 2}/30",)
        assert (link.bandwidth_mbps, link.latency_ms) == (100.0, 5.0)
    r2 = [
        (e.interface.name, link.id)
        for link in spec.links
        for e in (link.a, link.b)
        if e.node == "r2"
    ]
    assert r2 == [("eth0", "l2"), ("eth1", "l4"), ("eth2", "l5")]


def test_figure6_b_differs_only_by_name() -> None:
    a = load_vnet(ROOT / "examples" / "figure6.xml")
    b = load_vnet(ROOT / "examples" / "figure6-b.xml")
    assert b.name == "figure6b"
    assert (b.nodes, b.links) == (a.nodes, a.links)


def test_lab_substrate_example() -> None:
    sub = load_substrate(ROOT / "examples" / "lab-substrate.xml")
    assert [
        (h.name, h.cpu, h.memory_mb, h.location, h.data_address, h.mgmt_address) for h in sub.hosts
    ] == [
        ("h1", 8.0, 4096, "berlin", "198.18.0.11", "198.18.128.11"),
        ("h2", 8.0, 4096, "london", "198.18.0.12", "198.18.128.12"),
        ("h3", 8.0, 4096, "paris", "198.18.0.13", "198.18.128.13"),
    ]
    assert sub.switch == Switch("sw", "linux-bridge", ("h1", "h2", "h3"))
    assert (sub.data_network, sub.mgmt_network) == ("198.18.0.0/24", "198.18.128.0/24")


def test_load_picks_the_kind_by_root_element() -> None:
    assert isinstance(load(DATA / "full-vnet.xml"), VNetSpec)
    assert isinstance(load(DATA / "full-substrate.xml"), Substrate)
    assert isinstance(parse(vnet_doc('<node id="a"/>').encode()), VNetSpec)


# ------------------------------------------------- syntax and document kind


def test_syntax_error_names_file_and_line() -> None:
    path = DATA / "bad-syntax.xml"
    with pytest.raises(SpecErrors) as caught:
        load_vnet(path)
    error = caught.value.errors[0]
    assert (error.file, error.line, error.element) == (str(path), 4, "/")
    assert "XML syntax error" in error.message and "mismatch" in error.message
    assert str(error).startswith(f"{path}:4: /: XML syntax error")


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    error = only_error(str(tmp_path / "missing.xml"), lambda p, _: load(p))
    assert error.line is None and "cannot read file" in error.message


def test_doctype_is_refused() -> None:
    text = '<?xml version="1.0"?>\n<!DOCTYPE vnet [<!ENTITY e "x">]>\n' + vnet_doc('<node id="a"/>')
    error = only_error(text)
    assert "document type declarations are not allowed" in error.message


def test_external_entities_are_not_read() -> None:
    text = (
        '<?xml version="1.0"?>\n<!DOCTYPE vnet [<!ENTITY e SYSTEM "file:///etc/hostname">]>\n'
        + vnet_doc('<node id="a"/>\n<link id="l">&e;</link>')
    )
    with pytest.raises(SpecErrors) as caught:
        parse_vnet(text)
    assert all(e.element == "/" for e in caught.value.errors)


@pytest.mark.parametrize(
    ("reader", "text", "words"),
    [
        (parse_vnet, substrate_doc('<host name="h" cpu="1" memory="1"/>'), "expected a <vnet>"),
        (parse_substrate, vnet_doc('<node id="a"/>'), "expected a <substrate>"),
        (parse, '<vnet version="1" name="t"><node id="a"/></vnet>', "not an RDL v1"),
        (parse, f'<network {NS} name="t"/>', "found <network>"),
    ],
)
def test_wrong_root_element(reader: object, text: str, words: str) -> None:
    error = only_error(text, reader)
    assert error.line == 1 and words in error.message


# --------------------------------------------------------------- schema


SCHEMA_CASES = [
    (
        "missing-attribute",
        vnet_doc('<node cpu="1"/> <!-- here -->'),
        "/vnet/node",
        "attribute 'id' is required",
    ),
    (
        "bad-number",
        vnet_doc('<node id="a" cpu="two"/> <!-- here -->'),
        "/vnet/node[@id='a']",
        "'two' is not a valid value",
    ),
    (
        "negative-bandwidth",
        vnet_doc(
            '<node id="a"/><node id="b"/>\n<link id="l" bandwidth="-1"> <!-- here -->\n'
            '<endpoint node="a" interface="e0"/><endpoint node="b" interface="e0"/></link>'
        ),
        "/vnet/link[@id='l']",
        "'-1' must be greater than '0'",
    ),
    (
        "node-id-pattern",
        vnet_doc('<node id="Router-1"/> <!-- here -->'),
        "/vnet/node[@id='Router-1']",
        "not accepted by the pattern",
    ),
    (
        "interface-too-long",
        vnet_doc(
            '<node id="a"/><node id="b"/>\n<link id="l">\n'
            '<endpoint node="a" interface="averyverylongname"/> <!-- here -->\n'
            '<endpoint node="b" interface="e0"/></link>'
        ),
        "/vnet/link[@id='l']/endpoint[1]",
        "not accepted by the pattern",
    ),
    (
        "one-endpoint",
        vnet_doc(
            '<node id="a"/>\n<link id="l"><endpoint node="a" interface="e0"/></link> <!-- here -->'
        ),
        "/vnet/link[@id='l']",
        "Missing child element",
    ),
    (
        "unknown-element",
        vnet_doc('<node id="a"/>\n<router id="x"/> <!-- here -->'),
        "/vnet/router[@id='x']",
        "not expected",
    ),
    (
        "bad-console",
        vnet_doc('<node id="a">\n<console kind="ssh"/> <!-- here -->\n</node>'),
        "/vnet/node[@id='a']/console",
        "'ssh'",
    ),
    (
        "no-nodes",
        '<vnet xmlns="urn:vnet:rdl:1" version="1" name="t"/> <!-- here -->',
        "/vnet",
        "Missing child element",
    ),
    (
        "version",
        vnet_doc('<node id="a"/>').replace('version="1"', 'version="2"') + "<!-- here -->",
        "/vnet",
        "'2'",
    ),
    (
        "host-missing-memory",
        substrate_doc('<host name="h" cpu="1"/> <!-- here -->'),
        "/substrate/host[@name='h']",
        "attribute 'memory' is required",
    ),
]


@pytest.mark.parametrize(
    ("text", "element", "words"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES]
)
def test_schema_violation_names_line_element_and_problem(
    text: str, element: str, words: str
) -> None:
    error = only_error(text)
    expected_line = 1 if element in ("/vnet", "/substrate") else marked_line(text)
    assert (error.file, error.line, error.element) == ("t.xml", expected_line, element)
    assert words in error.message
    assert "{urn:vnet:rdl:1}" not in error.message
    assert error.hint


def test_schema_hint_explains_the_id_pattern() -> None:
    error = only_error(vnet_doc('<node id="R1"/>'))
    assert error.hint is not None and "15 characters" in error.hint


def test_all_schema_errors_are_reported_together() -> None:
    text = vnet_doc('<node id="a" cpu="x"/>\n<node memory="0"/>\n<node id="c" kind="lxc"/>')
    with pytest.raises(SpecErrors) as caught:
        parse_vnet(text, "t.xml")
    assert [e.line for e in caught.value.errors] == [2, 3, 3, 4]


# -------------------------------------------------------------- semantics

TWO = '<node id="a"/>\n<node id="b"/>\n'


def link(
    lid: str,
    a: str,
    b: str,
    *,
    ia: str = "e0",
    ib: str = "e0",
    aa: str = "",
    ab: str = "",
    mark: str = "",
) -> str:
    """A link; ``mark`` ("a", "b" or "link") puts the line marker on that line."""

    def end(node: str, iface: str, address: str, here: bool) -> str:
        inner = f"<address>{address}</address>" if address else ""
        tail = " <!-- here -->" if here else ""
        return f'<endpoint node="{node}" interface="{iface}">{inner}</endpoint>{tail}\n'

    head = f'<link id="{lid}">' + (" <!-- here -->" if mark == "link" else "") + "\n"
    return head + end(a, ia, aa, mark == "a") + end(b, ib, ab, mark == "b") + "</link>\n"


VNET_RULES = [
    (
        "duplicate-node",
        TWO + '<node id="a"/> <!-- here -->',
        "/vnet/node[@id='a']",
        "duplicate node id 'a' (first at line 2)",
    ),
    (
        "duplicate-link",
        TWO + link("l1", "a", "b") + link("l1", "a", "b", ia="e1", ib="e1", mark="link"),
        "/vnet/link[@id='l1']",
        "duplicate link id 'l1'",
    ),
    (
        "unknown-node",
        TWO + link("l1", "a", "c", mark="b"),
        "/vnet/link[@id='l1']/endpoint[2]",
        "unknown node 'c'",
    ),
    (
        "self-link",
        TWO + link("l1", "a", "a", ib="e1", mark="link"),
        "/vnet/link[@id='l1']",
        "connects node 'a' to itself",
    ),
    (
        "interface-reused",
        TWO + link("l1", "a", "b") + link("l2", "b", "a", ia="e1", mark="b"),
        "/vnet/link[@id='l2']/endpoint[2]",
        "interface 'e0' of node 'a' is already used",
    ),
    (
        "invalid-address",
        TWO + link("l1", "a", "b", aa="10.0.0.1/30", ab="10.0.0.300/30", mark="b"),
        "/vnet/link[@id='l1']/endpoint[2]/address",
        "'10.0.0.300/30' is not a valid address",
    ),
    (
        "network-address",
        TWO + link("l1", "a", "b", aa="10.0.0.0/30", ab="10.0.0.2/30", mark="a"),
        "/vnet/link[@id='l1']/endpoint[1]/address",
        "network address of 10.0.0.0/30",
    ),
    (
        "broadcast-address",
        TWO + link("l1", "a", "b", aa="10.0.0.1/30", ab="10.0.0.3/30", mark="b"),
        "/vnet/link[@id='l1']/endpoint[2]/address",
        "broadcast address",
    ),
    (
        "different-subnets",
        TWO + link("l1", "a", "b", aa="10.0.0.1/30", ab="10.0.0.5/30", mark="b"),
        "/vnet/link[@id='l1']/endpoint[2]/address",
        "not in the subnet of the other end",
    ),
    (
        "equal-ends",
        TWO + link("l1", "a", "b", aa="10.0.0.1/30", ab="10.0.0.1/30", mark="b"),
        "/vnet/link[@id='l1']/endpoint[2]/address",
        "both ends of the link have address 10.0.0.1",
    ),
    (
        "duplicate-address",
        TWO
        + '<node id="c"/>\n'
        + link("l1", "a", "b", aa="10.0.0.1/24", ab="10.0.0.2/24")
        + link("l2", "c", "b", ib="e1", aa="10.0.0.3/24", ab="10.0.0.2/24", mark="b"),
        "/vnet/link[@id='l2']/endpoint[2]/address",
        "address 10.0.0.2 is already used at line 7 (/vnet/link[@id='l1']/endpoint[2]/address)",
    ),
    (
        "netns-vnc",
        '<node id="a">\n<console kind="vnc"/> <!-- here -->\n</node>',
        "/vnet/node[@id='a']/console",
        "a netns node has no vnc console",
    ),
    (
        "duplicate-console",
        '<node id="a" kind="xen">\n<console kind="vnc"/>\n'
        '<console kind="vnc"/> <!-- here -->\n</node>',
        "/vnet/node[@id='a']/console[2]",
        "duplicate vnc console",
    ),
    (
        "location",
        "<constraints><location>berlin</location></constraints>\n"
        '<node id="a" location="oslo"/> <!-- here -->',
        "/vnet/node[@id='a']",
        "location 'oslo' is not among the allowed locations",
    ),
]


@pytest.mark.parametrize(
    ("body", "element", "words"), [c[1:] for c in VNET_RULES], ids=[c[0] for c in VNET_RULES]
)
def test_vnet_rule_names_line_element_and_problem(body: str, element: str, words: str) -> None:
    text = vnet_doc(body)
    error = only_error(text, parse_vnet)
    assert (error.file, error.line, error.element) == ("t.xml", marked_line(text), element)
    assert words in error.message
    assert error.hint


def test_qemu_and_xen_nodes_have_vnc_consoles() -> None:
    body = (
        '<node id="a" kind="qemu"><console kind="vnc"/><console kind="serial"/></node>\n'
        '<node id="b" kind="xen"><console kind="vnc"/></node>'
    )
    spec = parse_vnet(vnet_doc(body))
    assert spec.node("b").consoles == (ConsoleKind.VNC,)


def test_point_to_point_and_ipv6_subnets_are_accepted() -> None:
    body = (
        TWO
        + link("l1", "a", "b", aa="10.0.0.0/31", ab="10.0.0.1/31")
        + link("l2", "a", "b", ia="e1", ib="e1", aa="fd00::1/64", ab="FD00::2/64")
    )
    assert len(parse_vnet(vnet_doc(body)).links) == 2


SUBSTRATE_RULES = [
    (
        "duplicate-host",
        '<host name="h" cpu="1" memory="1"/>\n<host name="h" cpu="1" memory="1"/> <!-- here -->',
        "/substrate/host[@name='h']",
        "duplicate host or switch name 'h'",
    ),
    (
        "switch-named-like-host",
        '<switch name="h"/>\n<host name="h" cpu="1" memory="1"/> <!-- here -->',
        "/substrate/host[@name='h']",
        "duplicate host or switch name 'h'",
    ),
    (
        "unknown-link-end",
        '<host name="h1" cpu="1" memory="1"/>\n<link a="h1" b="h2" bandwidth="1"/> <!-- here -->',
        "/substrate/link",
        "link end 'h2' is neither a host nor the switch",
    ),
    (
        "self-link",
        '<host name="h1" cpu="1" memory="1"/>\n<link a="h1" b="h1" bandwidth="1"/> <!-- here -->',
        "/substrate/link",
        "connects 'h1' to itself",
    ),
    (
        "unknown-port",
        '<switch name="sw">\n<port host="h9"/> <!-- here -->\n</switch>\n'
        '<host name="h1" cpu="1" memory="1"/>',
        "/substrate/switch[@name='sw']/port",
        "unknown host 'h9'",
    ),
    (
        "host-bits",
        "<data-network>10.0.0.1/24</data-network> <!-- here -->\n"
        '<host name="h1" cpu="1" memory="1"/>',
        "/substrate/data-network",
        "has host bits set",
    ),
    (
        "outside-network",
        "<data-network>10.0.0.0/24</data-network>\n"
        '<host name="h1" cpu="1" memory="1" data-address="10.0.1.1"/> <!-- here -->',
        "/substrate/host[@name='h1']",
        "data-address 10.0.1.1 is not a host address",
    ),
    (
        "mgmt-outside-network",
        "<mgmt-network>10.9.0.0/24</mgmt-network>\n"
        '<host name="h1" cpu="1" memory="1" mgmt-address="10.9.0.255"/> <!-- here -->',
        "/substrate/host[@name='h1']",
        "mgmt-address 10.9.0.255 is not a host address",
    ),
    (
        "invalid-address",
        '<host name="h1" cpu="1" memory="1" data-address="10.0.0"/> <!-- here -->',
        "/substrate/host[@name='h1']",
        "'10.0.0' is not a valid IP address",
    ),
    (
        "duplicate-address",
        '<host name="h1" cpu="1" memory="1" data-address="10.0.0.1"/>\n'
        '<host name="h2" cpu="1" memory="1" mgmt-address="10.0.0.1"/> <!-- here -->',
        "/substrate/host[@name='h2']",
        "mgmt-address 10.0.0.1 is already used by data-address",
    ),
    (
        "overlap",
        "<data-network>10.0.0.0/16</data-network>\n"
        "<mgmt-network>10.0.128.0/24</mgmt-network> <!-- here -->\n"
        '<host name="h1" cpu="1" memory="1"/>',
        "/substrate/mgmt-network",
        "overlaps data network",
    ),
    (
        "duplicate-kind",
        '<host name="h1" cpu="1" memory="1">\n<kind>xen</kind>\n'
        "<kind>xen</kind> <!-- here -->\n</host>",
        "/substrate/host[@name='h1']/kind[2]",
        "duplicate node kind 'xen'",
    ),
]


@pytest.mark.parametrize(
    ("body", "element", "words"),
    [c[1:] for c in SUBSTRATE_RULES],
    ids=[c[0] for c in SUBSTRATE_RULES],
)
def test_substrate_rule_names_line_element_and_problem(body: str, element: str, words: str) -> None:
    text = substrate_doc(body)
    error = only_error(text, parse_substrate)
    assert (error.file, error.line, error.element) == ("t.xml", marked_line(text), element)
    assert words in error.message
    assert error.hint


def test_all_semantic_errors_are_reported_together() -> None:
    path = DATA / "many-errors.xml"
    with pytest.raises(SpecErrors) as caught:
        load_vnet(path)
    found = [(e.line, e.element) for e in caught.value.errors]
    assert found == [
        (5, "/vnet/node[@id='a']"),
        (6, "/vnet/node[@id='b']/console"),
        (9, "/vnet/link[@id='l1']/endpoint[2]"),
        (9, "/vnet/link[@id='l1']/endpoint[2]/address"),
    ]
    lines = str(caught.value).splitlines()
    assert lines[0] == f"4 errors in {path}"
    assert lines[1].startswith(f"{path}:5: /vnet/node[@id='a']: duplicate node id 'a'")
    assert len(lines) == 5


def test_schema_errors_stop_before_semantics() -> None:
    text = vnet_doc('<node id="a"/>\n<node id="a" cpu="x"/>')
    with pytest.raises(SpecErrors) as caught:
        parse_vnet(text)
    assert [e.message for e in caught.value.errors if "duplicate" in e.message] == []
