"""Unit tests of the pure want/have/plan functions of vnet.infra (no root)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from ansible_collections.vnet.infra.plugins.module_utils._iproute import (
    HostState,
    Iface,
    NodeHave,
    NodeWant,
    Qdisc,
    VnetError,
    VxlanParams,
    link_view_have,
    link_view_want,
    link_want,
    links_before_after,
    links_left,
    links_want,
    node_want,
    nodes_before_after,
    nodes_left,
    nodes_want,
    parse_ifaces,
    parse_netns_list,
    parse_root_qdisc,
    parse_root_qdiscs,
    plan_link,
    plan_links,
    plan_node,
    plan_nodes,
)
from ansible_collections.vnet.infra.plugins.module_utils._runner import Runner, batches

# ---------------------------------------------------------------- nodes


@pytest.mark.parametrize(
    ("want", "have", "expected"),
    [
        pytest.param(
            NodeWant("n1"),
            NodeHave(exists=False),
            [
                ["ip", "netns", "add", "n1"],
                ["ip", "-n", "n1", "link", "set", "lo", "up"],
                ["ip", "netns", "exec", "n1", "sysctl", "-w", "net.ipv4.ip_forward=1"],
            ],
            id="create",
        ),
        pytest.param(
            NodeWant("n1", forwarding=False),
            NodeHave(exists=False),
            [
                ["ip", "netns", "add", "n1"],
                ["ip", "-n", "n1", "link", "set", "lo", "up"],
                ["ip", "netns", "exec", "n1", "sysctl", "-w", "net.ipv4.ip_forward=0"],
            ],
            id="create-host",
        ),
        pytest.param(
            NodeWant("n1"),
            NodeHave(exists=True, lo_up=False, forwarding=True),
            [["ip", "-n", "n1", "link", "set", "lo", "up"]],
            id="lo-down",
        ),
        pytest.param(
            NodeWant("n1", forwarding=False),
            NodeHave(exists=True, lo_up=True, forwarding=True),
            [["ip", "netns", "exec", "n1", "sysctl", "-w", "net.ipv4.ip_forward=0"]],
            id="forwarding-off",
        ),
        pytest.param(
            NodeWant("n1"), NodeHave(exists=True, lo_up=True, forwarding=True), [], id="idempotent"
        ),
        pytest.param(
            NodeWant("n1", state="absent"),
            NodeHave(exists=True, lo_up=True),
            [["ip", "netns", "delete", "n1"]],
            id="delete",
        ),
        pytest.param(
            NodeWant("n1", state="absent"), NodeHave(exists=False), [], id="absent-idempotent"
        ),
    ],
)
def test_plan_node(want: NodeWant, have: NodeHave, expected: list[list[str]]) -> None:
    assert plan_node(want, have) == expected


def test_node_driver_rejected() -> None:
    with pytest.raises(VnetError, match="driver qemu is not supported"):
        node_want({"name": "n1", "state": "present", "forwarding": True, "driver": "qemu"})


# ---------------------------------------------------------------- links

PARAMS = {
    "bridge": "vb1",
    "ports": [
        {
            "netns": "n1",
            "ifname": "eth0",
            "peer": "vp1",
            "addresses": ["198.18.10.1/24"],
            "mtu": 1450,
        }
    ],
    "tunnel": {
        "kind": "vxlan",
        "device": "vx1",
        "vni": 42,
        "local": "198.18.0.1",
        "remote": "198.18.0.2",
        "dstport": 4789,
    },
    "bandwidth_mbps": None,
    "state": "present",
}

CONVERGED = HostState(
    links={
        "lo": Iface("lo", up=True, mtu=65536, ifindex=1),
        "vb1": Iface("vb1", kind="bridge", ifindex=5, up=True, mtu=1450),
        "vx1": Iface(
            "vx1",
            kind="vxlan",
            ifindex=6,
            up=True,
            master="vb1",
            vxlan=VxlanParams(42, "198.18.0.1", "198.18.0.2", 4789, False),
        ),
        "vp1": Iface("vp1", kind="veth", ifindex=7, link_index=2, up=True, mtu=1450, master="vb1"),
    },
    netns={
        "n1": {
            "lo": Iface("lo", up=True, ifindex=1, mtu=65536),
            "eth0": Iface(
                "eth0",
                kind="veth",
                ifindex=2,
                link_index=7,
                up=True,
                mtu=1450,
                addresses=("198.18.10.1/24",),
            ),
        }
    },
)

CREATE = [
    ["ip", "link", "add", "vb1", "type", "bridge"],
    ["ip", "link", "set", "dev", "vb1", "up"],
    [
        "ip",
        "link",
        "add",
        "vx1",
        "type",
        "vxlan",
        "id",
        "42",
        "local",
        "198.18.0.1",
        "remote",
        "198.18.0.2",
        "dstport",
        "4789",
        "nolearning",
    ],
    ["ip", "link", "set", "dev", "vx1", "master", "vb1"],
    ["ip", "link", "set", "dev", "vx1", "up"],
    [
        "ip",
        "link",
        "add",
        "vp1",
        "mtu",
        "1450",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        "1450",
        "netns",
        "n1",
    ],
    ["ip", "link", "set", "dev", "vp1", "master", "vb1"],
    ["ip", "link", "set", "dev", "vp1", "up"],
    ["ip", "-n", "n1", "address", "add", "198.18.10.1/24", "dev", "eth0"],
    ["ip", "-n", "n1", "link", "set", "dev", "eth0", "up"],
]


def _with(
    state: HostState,
    links: dict | None = None,
    netns: dict | None = None,
    qdiscs: dict | None = None,
) -> HostState:
    return HostState(
        links={**state.links, **(links or {})},
        netns={k: {**v, **(netns or {}).get(k, {})} for k, v in state.netns.items()},
        qdiscs={**state.qdiscs, **(qdiscs or {})},
    )


def test_link_create_from_nothing() -> None:
    have = HostState(links={}, netns={"n1": {"lo": Iface("lo", up=True)}})
    assert plan_link(link_want(PARAMS), have) == CREATE


def test_link_idempotent() -> None:
    assert plan_link(link_want(PARAMS), CONVERGED) == []


def test_link_stopped_node_end_goes_down_and_back() -> None:
    stopped = {**PARAMS, "ports": [{**PARAMS["ports"][0], "up": False}]}
    assert plan_link(link_want(stopped), CONVERGED) == [
        ["ip", "-n", "n1", "link", "set", "dev", "eth0", "down"]]
    down = HostState(links=CONVERGED.links, netns={"n1": {
        **CONVERGED.netns["n1"], "eth0": dataclasses.replace(CONVERGED.netns["n1"]["eth0"],
                                                             up=False)}})
    assert plan_link(link_want(stopped), down) == []  # idempotent while stopped
    assert link_view_have(link_want(stopped), down) == link_view_want(link_want(stopped))
    assert plan_link(link_want(PARAMS), down) == [
        ["ip", "-n", "n1", "link", "set", "dev", "eth0", "up"]]


def test_link_view_matches_when_converged() -> None:
    want = link_want(PARAMS)
    assert link_view_have(want, CONVERGED) == link_view_want(want)


def test_link_missing_netns_is_an_error_outside_check_mode() -> None:
    have = HostState(links={}, netns={})
    with pytest.raises(VnetError, match="namespace n1 of port vp1 does not exist"):
        plan_link(link_want(PARAMS), have)
    assert plan_link(link_want(PARAMS), have, check_missing_netns=False) == CREATE


def test_link_vxlan_params_differ_recreates() -> None:
    have = _with(
        CONVERGED,
        links={
            "vx1": Iface(
                "vx1",
                kind="vxlan",
                ifindex=6,
                up=True,
                master="vb1",
                vxlan=VxlanParams(42, "198.18.0.1", "198.18.0.9", 4789, False),
            )
        },
    )
    assert plan_link(link_want(PARAMS), have) == [
        ["ip", "link", "delete", "vx1"],
        [
            "ip",
            "link",
            "add",
            "vx1",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            "198.18.0.1",
            "remote",
            "198.18.0.2",
            "dstport",
            "4789",
            "nolearning",
        ],
        ["ip", "link", "set", "dev", "vx1", "master", "vb1"],
        ["ip", "link", "set", "dev", "vx1", "up"],
    ]


def test_link_addresses_exactly_and_mtu() -> None:
    have = _with(
        CONVERGED,
        netns={
            "n1": {
                "eth0": Iface(
                    "eth0",
                    kind="veth",
                    ifindex=2,
                    link_index=7,
                    up=True,
                    mtu=1500,
                    addresses=("198.18.99.1/24", "198.18.10.1/24"),
                )
            }
        },
    )
    assert plan_link(link_want(PARAMS), have) == [
        ["ip", "-n", "n1", "link", "set", "dev", "eth0", "mtu", "1450"],
        ["ip", "-n", "n1", "address", "delete", "198.18.99.1/24", "dev", "eth0"],
    ]


def test_link_orphan_host_end_is_replaced() -> None:
    have = _with(CONVERGED)
    del have.netns["n1"]["eth0"]
    assert plan_link(link_want(PARAMS), have) == [
        ["ip", "link", "delete", "vp1"],
        [
            "ip",
            "link",
            "add",
            "vp1",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            "1450",
            "netns",
            "n1",
        ],
        ["ip", "link", "set", "dev", "vp1", "master", "vb1"],
        ["ip", "link", "set", "dev", "vp1", "up"],
        ["ip", "-n", "n1", "address", "add", "198.18.10.1/24", "dev", "eth0"],
        ["ip", "-n", "n1", "link", "set", "dev", "eth0", "up"],
    ]


def test_link_wrong_kind_is_an_error() -> None:
    have = _with(CONVERGED, links={"vb1": Iface("vb1", kind="dummy")})
    with pytest.raises(VnetError, match="vb1 exists and is a dummy, not a bridge"):
        plan_link(link_want(PARAMS), have)


def test_link_bandwidth() -> None:
    want = link_want({**PARAMS, "bandwidth_mbps": 10.0})
    tbf = [
        "tc",
        "qdisc",
        "replace",
        "dev",
        "vp1",
        "root",
        "tbf",
        "rate",
        "10000kbit",
        "burst",
        "15000",
        "latency",
        "50ms",
    ]
    assert plan_link(want, CONVERGED) == [tbf]
    assert plan_link(want, _with(CONVERGED, qdiscs={"vp1": Qdisc("tbf", 2_500_000)})) == [tbf]
    assert plan_link(want, _with(CONVERGED, qdiscs={"vp1": Qdisc("tbf", 1_250_000)})) == []


def test_link_absent() -> None:
    want = link_want({**PARAMS, "state": "absent"})
    assert plan_link(want, CONVERGED) == [
        ["ip", "link", "delete", "vp1"],
        ["ip", "link", "delete", "vx1"],
        ["ip", "link", "delete", "vb1"],
    ]
    assert plan_link(want, HostState()) == []
    assert link_view_want(want) == {}


def test_link_absent_node_end_only() -> None:
    want = link_want({**PARAMS, "state": "absent", "tunnel": None})
    have = HostState(netns={"n1": {"eth0": Iface("eth0", kind="veth")}})
    assert plan_link(want, have) == [["ip", "-n", "n1", "link", "delete", "eth0"]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bridge": "a-bridge-name-too-long"}, "1 to 15 characters"),
        ({"ports": [{**PARAMS["ports"][0], "ifname": "x" * 16}]}, "1 to 15 characters"),
        ({"ports": [{**PARAMS["ports"][0], "peer": "vb1"}]}, "must differ"),
        (
            {"ports": [{**PARAMS["ports"][0], "addresses": ["198.18.10.300/24"]}]},
            "invalid interface address",
        ),
        ({"bandwidth_mbps": 0}, "must be positive"),
    ],
)
def test_link_bad_params(change: dict, message: str) -> None:
    with pytest.raises(VnetError, match=message):
        link_want({**PARAMS, **change})


# ---------------------------------------------------------------- parsing

IP_ADDR_JSON = json.dumps(
    [
        {
            "ifindex": 7,
            "link_index": 2,
            "ifname": "vp1",
            "flags": ["BROADCAST", "UP", "LOWER_UP"],
            "mtu": 1450,
            "master": "vb1",
            "link_netnsid": 0,
            "linkinfo": {"info_kind": "veth"},
            "addr_info": [
                {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}
            ],
        },
        {
            "ifindex": 6,
            "ifname": "vx1",
            "flags": ["BROADCAST"],
            "mtu": 1500,
            "linkinfo": {
                "info_kind": "vxlan",
                "info_data": {
                    "id": 42,
                    "remote": "198.18.0.2",
                    "local": "198.18.0.1",
                    "port": 4789,
                    "learning": False,
                },
            },
            "addr_info": [],
        },
        {
            "ifindex": 2,
            "ifname": "eth0",
            "flags": ["UP"],
            "mtu": 1500,
            "addr_info": [
                {"family": "inet", "local": "198.18.10.1", "prefixlen": 24, "scope": "global"},
                {"family": "inet6", "local": "2001:db8::1", "prefixlen": 64, "scope": "global"},
            ],
        },
    ]
)


def test_parse_ifaces() -> None:
    links = parse_ifaces(IP_ADDR_JSON)
    assert links["vp1"] == Iface(
        "vp1", kind="veth", ifindex=7, link_index=2, up=True, mtu=1450, master="vb1", addresses=()
    )
    assert links["vx1"].vxlan == VxlanParams(42, "198.18.0.1", "198.18.0.2", 4789, False)
    assert links["vx1"].up is False
    assert links["eth0"].addresses == ("198.18.10.1/24", "2001:db8::1/64")


def test_parse_netns_list_and_qdisc() -> None:
    assert parse_netns_list("") == set()
    assert parse_netns_list('[{"name":"a","id":0},{"name":"b"}]') == {"a", "b"}
    assert parse_root_qdisc('[{"kind":"tbf","root":true,"options":{"rate":1250000}}]') == Qdisc(
        "tbf", 1250000
    )
    assert parse_root_qdisc('[{"kind":"noqueue","root":true,"options":{}}]') == Qdisc(
        "noqueue", None
    )
    assert parse_root_qdisc("") is None


# ---------------------------------------------------------------- aggregates


def test_nodes_aggregate_scheduled_and_idempotent() -> None:
    wants = nodes_want(
        [
            {"vnode": "r1", "netns": "n1", "forwarding": True, "driver": "netns"},
            {"vnode": "e1", "name": "n2", "forwarding": False},
        ],
        "present",
    )
    assert [w.label for w in wants] == ["r1", "e1"]
    assert plan_nodes(wants, HostState()) == [
        ["ip", "netns", "add", "n1"],
        ["ip", "netns", "exec", "n1", "sysctl", "-w", "net.ipv4.ip_forward=1"],
        ["ip", "netns", "add", "n2"],
        ["ip", "netns", "exec", "n2", "sysctl", "-w", "net.ipv4.ip_forward=0"],
        ["ip", "-n", "n1", "link", "set", "lo", "up"],
        ["ip", "-n", "n2", "link", "set", "lo", "up"],
    ]
    lo = {"lo": Iface("lo", up=True)}
    converged = HostState(netns={"n1": lo, "n2": lo}, forwarding={"n1": True, "n2": False})
    assert plan_nodes(wants, converged) == []
    assert nodes_left(wants, converged) == []
    assert nodes_left(wants, HostState())[0].startswith("virtual node r1 (n1): ")
    before, after = nodes_before_after(wants, HostState(netns={"n1": lo}, forwarding={"n1": True}))
    assert before == {"n1": {"netns": True, "lo_up": True, "forwarding": True}}
    assert after["n2"] == {"netns": True, "lo_up": True, "forwarding": False}


def test_nodes_aggregate_absent() -> None:
    wants = nodes_want([{"netns": "n1"}, {"netns": "n2"}], "absent")
    have = HostState(netns={"n2": {}})
    assert plan_nodes(wants, have) == [["ip", "netns", "delete", "n2"]]
    assert nodes_before_after(wants, have) == ({"n2": {"netns": True}}, {})


def test_nodes_aggregate_reports_every_error() -> None:
    with pytest.raises(VnetError) as info:
        nodes_want([{"netns": "n1", "driver": "qemu"}, {"netns": "n2"}, {"netns": "n2"}], "present")
    assert info.value.details["errors"] == [
        "virtual node n1: driver qemu is not supported",
        "virtual node n2: namespace n2 is listed twice",
    ]


LOCAL = {
    "link": "l2",
    "bridge": "vb2",
    "ports": [{"netns": "n1", "ifname": "eth1", "peer": "vp2", "addresses": [], "mtu": 1500}],
    "tunnel": None,
    "bandwidth_mbps": 10.0,
}


def test_links_aggregate_one_read_scheduled() -> None:
    wants = links_want([{**PARAMS, "link": "l1"}, LOCAL], "present")
    have = HostState(netns={"n1": {}})
    assert plan_links(wants, have) == [
        *[c for c in CREATE if c[1] != "-n"],
        ["ip", "link", "add", "vb2", "type", "bridge"],
        ["ip", "link", "set", "dev", "vb2", "up"],
        [
            "ip",
            "link",
            "add",
            "vp2",
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "mtu",
            "1500",
            "netns",
            "n1",
        ],
        ["ip", "link", "set", "dev", "vp2", "master", "vb2"],
        ["ip", "link", "set", "dev", "vp2", "up"],
        *[c for c in CREATE if c[1] == "-n"],
        ["ip", "-n", "n1", "link", "set", "dev", "eth1", "up"],
        [
            "tc",
            "qdisc",
            "replace",
            "dev",
            "vp2",
            "root",
            "tbf",
            "rate",
            "10000kbit",
            "burst",
            "15000",
            "latency",
            "50ms",
        ],
    ]
    assert plan_links(wants[:1], CONVERGED) == []
    assert links_left(wants[:1], CONVERGED) == []
    before, after = links_before_after(wants[:1], CONVERGED)
    assert before == after == {"vb1": link_view_want(wants[0])}


def test_links_aggregate_deletes_before_creating() -> None:
    """A half pair is deleted in the first stage, before the host creates the pair."""
    wants = links_want([{**PARAMS, "tunnel": None}], "present")
    have = HostState(netns={"n1": {"eth0": Iface("eth0", kind="veth", ifindex=2, link_index=99)}})
    commands = plan_links(wants, have)
    assert commands[0] == ["ip", "-n", "n1", "link", "delete", "eth0"]
    assert commands.index(["ip", "-n", "n1", "link", "delete", "eth0"]) < [
        c[:4] for c in commands
    ].index(["ip", "link", "add", "vp1"])


def test_links_aggregate_reports_every_error_naming_the_link() -> None:
    wants = links_want([{**PARAMS, "link": "l1"}, LOCAL], "present")
    have = HostState(
        links={"vb1": Iface("vb1", kind="veth"), "vp2": Iface("vp2", kind="dummy")},
        netns={"n1": {}},
    )
    with pytest.raises(VnetError) as info:
        plan_links(wants, have)
    assert info.value.details["errors"] == [
        "link l1 (bridge vb1): vb1 exists and is a veth, not a bridge: remove it",
        "link l2 (bridge vb2): vp2 exists and is a dummy, not a veth: remove it",
    ]


def test_links_aggregate_names_must_not_be_shared() -> None:
    clash = {**LOCAL, "ports": [{**LOCAL["ports"][0], "ifname": "eth0", "peer": "vx1"}]}
    with pytest.raises(VnetError) as info:
        links_want([{**PARAMS, "link": "l1"}, clash], "present")
    assert info.value.details["errors"] == [
        "link l1 (bridge vb1) and link l2 (bridge vb2) both use interface vx1",
        "link l1 (bridge vb1) and link l2 (bridge vb2) both use interface eth0 in namespace n1",
    ]


def test_links_aggregate_absent() -> None:
    wants = links_want([{**PARAMS, "link": "l1"}, LOCAL], "absent")
    assert plan_links(wants, CONVERGED) == [
        ["ip", "link", "delete", "vp1"],
        ["ip", "link", "delete", "vx1"],
        ["ip", "link", "delete", "vb1"],
    ]
    assert links_before_after(wants, HostState()) == ({}, {})


def test_parse_root_qdiscs() -> None:
    text = json.dumps(
        [
            {"kind": "noqueue", "handle": "0:", "dev": "lo", "root": True, "options": {}},
            {"kind": "tbf", "dev": "vp1", "root": True, "options": {"rate": 1250000}},
            {"kind": "pfifo", "dev": "vp1", "parent": "1:1", "options": {}},
        ]
    )
    assert parse_root_qdiscs(text) == {"lo": Qdisc("noqueue"), "vp1": Qdisc("tbf", 1250000)}


# ---------------------------------------------------------------- batching


def test_batches_group_by_program_and_namespace() -> None:
    commands = [
        ["ip", "link", "add", "vb1", "type", "bridge"],
        ["ip", "link", "set", "dev", "vb1", "up"],
        ["ip", "-n", "n1", "address", "add", "198.18.10.1/24", "dev", "eth0"],
        ["ip", "-n", "n1", "link", "set", "dev", "eth0", "up"],
        ["ip", "-n", "n2", "link", "set", "dev", "eth0", "up"],
        ["tc", "qdisc", "replace", "dev", "vp1", "root", "tbf"],
        ["tc", "qdisc", "replace", "dev", "vp2", "root", "tbf"],
        ["ip", "link", "set", "dev", "has space", "up"],
    ]
    assert batches(commands) == [
        (["ip", "-batch", "-"], [c[1:] for c in commands[:2]], commands[:2]),
        (["ip", "-n", "n1", "-batch", "-"], [c[3:] for c in commands[2:4]], commands[2:4]),
        (commands[4], [], [commands[4]]),
        (["tc", "-batch", "-"], [c[1:] for c in commands[5:7]], commands[5:7]),
        (commands[7], [], [commands[7]]),
    ]


class FakeModule:
    """run_command of an AnsibleModule: records argv and stdin, fails as told."""

    def __init__(self, results: list[tuple[int, str, str]]) -> None:
        self.results = results
        self.calls: list[tuple[list[str], str | None]] = []

    def get_bin_path(self, name: str, required: bool = False) -> str:
        return name

    def run_command(
        self, argv: list[str], data: str | None = None, binary_data: bool = False
    ) -> tuple:
        self.calls.append((argv, data))
        return self.results.pop(0)


def test_runner_batch_failure_names_the_command() -> None:
    commands = [
        ["ip", "link", "add", "a", "type", "bridge"],
        ["ip", "link", "add", "b", "type", "bridge"],
    ]
    module = FakeModule([(1, "", "RTNETLINK answers: File exists\nCommand failed -:2\n")])
    runner = Runner(module)
    with pytest.raises(VnetError) as info:
        runner.apply(commands)
    assert module.calls == [
        (["ip", "-batch", "-"], "link add a type bridge\nlink add b type bridge\n")
    ]
    assert (
        info.value.msg
        == "command failed: ip link add b type bridge: RTNETLINK answers: File exists"
    )
    assert info.value.details["failed_command"] == commands[1]
    assert runner.executed == commands[:1]


def test_runner_batch_failure_without_line_names_the_batch() -> None:
    commands = [
        ["ip", "link", "add", "a", "type", "bridge"],
        ["ip", "link", "set", "dev", "a", "up"],
    ]
    runner = Runner(FakeModule([(255, "", 'Error: argument "x" is wrong\n')]))
    with pytest.raises(
        VnetError, match="somewhere in: ip link add a type bridge; ip link set dev a up"
    ):
        runner.apply(commands)
    assert runner.executed == []


# ---------------------------------------------------------------- direct veth pairs

PAIR = {
    "bridge": "vbp",
    "link": "lp",
    "ports": [
        {"netns": "na", "ifname": "eth0", "peer": "vpa", "addresses": ["198.19.5.1/30"]},
        {"netns": "nb", "ifname": "eth0", "peer": "vpb", "addresses": ["198.19.5.2/30"]},
    ],
    "tunnel": None,
    "bandwidth_mbps": 10.0,
}
PAIR_ADD = ["ip", "link", "add", "eth0", "mtu", "1500", "netns", "na", "type", "veth",
            "peer", "name", "eth0", "mtu", "1500", "netns", "nb"]


def _tbf(netns: str) -> list[str]:
    return ["tc", "-n", netns, "qdisc", "replace", "dev", "eth0", "root", "tbf",
            "rate", "10000kbit", "burst", "15000", "latency", "50ms"]


def _paired(up: bool = True, qdisc: bool = True) -> HostState:
    a = Iface("eth0", "veth", ifindex=7, link_index=9, up=up, addresses=("198.19.5.1/30",))
    b = Iface("eth0", "veth", ifindex=9, link_index=7, up=up, addresses=("198.19.5.2/30",))
    tbf = {"eth0": Qdisc("tbf", 1250000)} if qdisc else {}
    return HostState(netns={"na": {"eth0": a}, "nb": {"eth0": b}},
                     ns_qdiscs={"na": dict(tbf), "nb": dict(tbf)})


def test_two_local_ports_are_one_veth_pair_without_bridge() -> None:
    want = link_want(PAIR)
    assert want.direct()
    assert plan_links((want,), HostState(netns={"na": {}, "nb": {}})) == [
        PAIR_ADD,
        ["ip", "-n", "na", "address", "add", "198.19.5.1/30", "dev", "eth0"],
        ["ip", "-n", "na", "link", "set", "dev", "eth0", "up"],
        ["ip", "-n", "nb", "address", "add", "198.19.5.2/30", "dev", "eth0"],
        ["ip", "-n", "nb", "link", "set", "dev", "eth0", "up"],
        _tbf("na"),
        _tbf("nb"),
    ]
    assert plan_link(want, _paired()) == []
    assert plan_link(want, _paired(qdisc=False)) == [_tbf("na"), _tbf("nb")]
    assert links_left((want,), _paired()) == []
    before, after = links_before_after((want,), _paired())
    assert before == after
    assert after["vbp"]["veth"]["vpa"]["rate_kbit"] == 10000


def test_direct_pair_stopped_node_and_bridged_flag() -> None:
    stopped = link_want({**PAIR, "ports": [{**PAIR["ports"][0], "up": False}, PAIR["ports"][1]]})
    down = ["ip", "-n", "na", "link", "set", "dev", "eth0", "down"]
    assert plan_link(stopped, _paired()) == [down]
    # bridged: the segment keeps its bridge (something joins it later)
    kept = link_want({**PAIR, "bridged": True})
    assert not kept.direct()
    empty = HostState(netns={"na": {}, "nb": {}})
    assert ["ip", "link", "add", "vbp", "type", "bridge"] in plan_link(kept, empty)
    # a tunnel or a third port is not a pair
    assert not link_want({**PAIR, "ports": PAIR["ports"][:1]}).direct()


def test_bridged_form_becomes_a_pair() -> None:
    """A segment deployed with a bridge before: the bridge and host ends go
    (a host end takes its node end along), then the pair is made."""
    have = HostState(
        links={"vbp": Iface("vbp", "bridge", ifindex=3, up=True),
               "vpa": Iface("vpa", "veth", ifindex=4, link_index=2, master="vbp", up=True),
               "vpb": Iface("vpb", "veth", ifindex=5, link_index=2, master="vbp", up=True)},
        netns={"na": {"eth0": Iface("eth0", "veth", ifindex=2, link_index=4)},
               "nb": {"eth0": Iface("eth0", "veth", ifindex=2, link_index=5)}})
    commands = plan_links((link_want(PAIR),), have)
    assert commands[:4] == [["ip", "link", "delete", "vpa"], ["ip", "link", "delete", "vpb"],
                            ["ip", "link", "delete", "vbp"], PAIR_ADD]


def test_direct_pair_absent_deletes_one_end() -> None:
    want = link_want({**PAIR, "state": "absent"})
    assert plan_link(want, _paired()) == [["ip", "-n", "na", "link", "delete", "eth0"]]
    assert plan_link(want, HostState(netns={"na": {}, "nb": {}})) == []
    assert link_view_want(want) == {}
