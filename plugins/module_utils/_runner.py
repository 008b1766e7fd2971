# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading host state and running planned commands (private to the collection).

The only side effects of the vnet modules live here: ``Runner`` wraps
``AnsibleModule.run_command`` with argv lists, and the ``read_*`` functions
turn ``ip -json`` output into the ``have`` types of ``_iproute``.
"""

from __future__ import annotations

from ansible_collections.vnet.infra.plugins.module_utils._iproute import (
    Command,
    HostState,
    LinkWant,
    NodeHave,
    VnetError,
    parse_forwarding,
    parse_ifaces,
    parse_netns_list,
    parse_root_qdisc,
)


class Runner:
    """Runs argv lists through an AnsibleModule, resolving ip and tc once."""

    def __init__(self, module) -> None:
        self.module = module
        self.executed: list[Command] = []
        self._bins: dict[str, str] = {}

    def _argv(self, argv: Command) -> list[str]:
        name = argv[0]
        if name not in self._bins:
            self._bins[name] = self.module.get_bin_path(name, required=True)
        return [self._bins[name]] + list(argv[1:])

    def read(self, argv: Command, tolerate: bool = False) -> str:
        """Run a read-only command; with `tolerate`, a failure yields ''."""
        rc, out, err = self.module.run_command(self._argv(argv))
        if rc != 0:
            if tolerate:
                return ""
            raise VnetError("command failed: %s" % " ".join(argv), rc=rc, stderr=err)
        return out

    def apply(self, commands: list[Command]) -> None:
        """Run planned commands in order, stopping at the first failure."""
        for argv in commands:
            rc, out, err = self.module.run_command(self._argv(argv))
            if rc != 0:
                raise VnetError(
                    "command failed: %s: %s" % (" ".join(argv), (err or out).strip()),
                    rc=rc, stderr=err, failed_command=argv,
                )
            self.executed.append(list(argv))


def netns_names(runner: Runner) -> set[str]:
    return parse_netns_list(runner.read(["ip", "-json", "netns", "list"]))


def read_node(runner: Runner, name: str) -> NodeHave:
    if name not in netns_names(runner):
        return NodeHave(exists=False)
    links = parse_ifaces(runner.read(["ip", "-n", name, "-json", "-details", "address", "show"]))
    lo = links.get("lo")
    forwarding = parse_forwarding(
        runner.read(["ip", "netns", "exec", name, "sysctl", "-n", "net.ipv4.ip_forward"])
    )
    return NodeHave(exists=True, lo_up=bool(lo and lo.up), forwarding=forwarding)


def read_host(runner: Runner, want: LinkWant) -> HostState:
    links = parse_ifaces(runner.read(["ip", "-json", "-details", "address", "show"]))
    existing = netns_names(runner)
    netns = {}
    for name in want.netns_names():
        if name in existing:
            netns[name] = parse_ifaces(
                runner.read(["ip", "-n", name, "-json", "-details", "address", "show"], tolerate=True)
            )
    qdiscs = {}
    if want.bandwidth_mbps is not None:
        for port in want.ports:
            if port.peer in links:
                qdisc = parse_root_qdisc(runner.read(["tc", "-json", "qdisc", "show", "dev", port.peer]))
                if qdisc is not None:
                    qdiscs[port.peer] = qdisc
    return HostState(links=links, netns=netns, qdiscs=qdiscs)
