#!/usr/bin/python
# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vnet_link
short_description: Manage one substrate host's segment of a vnet virtual link
version_added: 0.1.0
description:
  - A virtual link segment is a Linux bridge on the substrate host, one veth pair
    per local port (host end on the bridge, node end moved into the virtual node's
    namespace, renamed, with its MTU and addresses), and, for a link that crosses
    hosts, a VXLAN device on the bridge towards the other host.
  - A segment of exactly two local ports in two namespaces, with no tunnel, is
    instead one veth pair straight between the two namespaces (no bridge, no
    host ends; see O(bridged)); removing the namespaces removes it.
  - Optionally limits the bandwidth with a C(tbf) qdisc on the egress of the
    host-side veth ends.
  - Reads the current state with C(ip -json) and C(tc -json), plans the
    difference and runs only the commands needed (argv lists); returns them in
    RV(commands). A VXLAN device whose parameters differ is recreated.
  - Manages one segment (O(bridge)) or, in one run, every segment of a host
    (O(links)).
author: vnet developers (@vnet)
options:
  bridge:
    description:
      - Name of the Linux bridge of this segment (at most 15 characters).
      - Exactly one of O(bridge) and O(links) is required.
    type: str
  links:
    description:
      - Every link segment of the host, as a list (the C(links) of a vnet
        deployment plan's host). Mutually exclusive with O(bridge), O(ports),
        O(tunnel), O(bandwidth_mbps) and O(bridged), which are per segment here.
      - The host is read once (C(ip netns list), then the interfaces and root
        qdiscs of the host and of each namespace of a port, over rtnetlink from
        the module, or with C(ip -json -details address show) and
        C(tc -json qdisc show) where that is not possible), every segment is
        planned before any command runs, and planning errors of all segments
        are reported together. Segments may not share interface names.
      - The commands run grouped by stage (deletions, host, each namespace,
        C(tc)) as few C(ip -batch) / C(tc -batch) processes; a namespace's
        C(ip -n) and C(tc -n) commands are sent as rtnetlink requests from the
        module where it knows them all. A failure names the exact command.
    type: list
    elements: dict
    suboptions:
      link:
        description: Name of the virtual link in the plan, used in messages only.
        type: str
      bridge:
        description: Name of the Linux bridge of this segment (at most 15 characters).
        type: str
        required: true
      ports:
        description: The veth pairs that join virtual nodes on this host to the bridge.
        type: list
        elements: dict
        default: []
        suboptions:
          netns:
            description: Namespace of the virtual node (see M(vnet.infra.vnet_node)).
            type: str
            required: true
          ifname:
            description: Name of the interface inside the virtual node.
            type: str
            required: true
          peer:
            description: Name of the host end of the veth pair, enslaved to the bridge.
            type: str
            required: true
          addresses:
            description:
              - Addresses (CIDR) of the node interface; exactly these global addresses
                are kept, others are removed.
            type: list
            elements: str
            default: []
          mtu:
            description: MTU of both ends of the veth pair.
            type: int
            default: 1500
          up:
            description:
              - Whether the node's end of the pair is up; false while the node is
                stopped (C(vnet ctl VNET NODE stop)), so it neither answers nor forwards.
            type: bool
            default: true
      tunnel:
        description: The encapsulated part of a link that crosses substrate hosts.
        type: dict
        suboptions:
          kind:
            description: Encapsulation. Only V(vxlan) is implemented.
            type: str
            choices: [vxlan]
            default: vxlan
          device:
            description: Name of the tunnel device.
            type: str
            required: true
          vni:
            description: VXLAN network identifier.
            type: int
            required: true
          local:
            description: Local substrate address of the tunnel.
            type: str
            required: true
          remote:
            description: Substrate address of the other host (point-to-point, no learning).
            type: str
            required: true
          dstport:
            description: UDP destination port.
            type: int
            default: 4789
      bandwidth_mbps:
        description:
          - Rate limit in Mbit/s, enforced with a C(tbf) root qdisc on each host-side
            veth end (on each node end for a direct veth pair). Left alone when not given.
        type: float
      bridged:
        description:
          - V(true) keeps the bridge for a segment of two local ports (one that
            other devices join later, such as an end-user attachment point).
            Otherwise such a segment is one veth pair straight between the two
            namespaces, with no bridge and no host ends.
        type: bool
  ports:
    description: The veth pairs that join virtual nodes on this host to the bridge.
    type: list
    elements: dict
    default: []
    suboptions:
      netns:
        description: Namespace of the virtual node (see M(vnet.infra.vnet_node)).
        type: str
        required: true
      ifname:
        description: Name of the interface inside the virtual node.
        type: str
        required: true
      peer:
        description: Name of the host end of the veth pair, enslaved to the bridge.
        type: str
        required: true
      addresses:
        description:
          - Addresses (CIDR) of the node interface; exactly these global addresses
            are kept, others are removed.
        type: list
        elements: str
        default: []
      mtu:
        description: MTU of both ends of the veth pair.
        type: int
        default: 1500
      up:
        description:
          - Whether the node's end of the pair is up; false while the node is
            stopped (C(vnet ctl VNET NODE stop)), so it neither answers nor forwards.
        type: bool
        default: true
  tunnel:
    description: The encapsulated part of a link that crosses substrate hosts.
    type: dict
    suboptions:
      kind:
        description: Encapsulation. Only V(vxlan) is implemented.
        type: str
        choices: [vxlan]
        default: vxlan
      device:
        description: Name of the tunnel device.
        type: str
        required: true
      vni:
        description: VXLAN network identifier.
        type: int
        required: true
      local:
        description: Local substrate address of the tunnel.
        type: str
        required: true
      remote:
        description: Substrate address of the other host (point-to-point, no learning).
        type: str
        required: true
      dstport:
        description: UDP destination port.
        type: int
        default: 4789
  bandwidth_mbps:
    description:
      - Rate limit in Mbit/s, enforced with a C(tbf) root qdisc on each host-side
        veth end (on each node end for a direct veth pair). Left alone when not given.
    type: float
  bridged:
    description:
      - V(true) keeps the bridge for a segment of two local ports (one that
        other devices join later, such as an end-user attachment point).
        Otherwise such a segment is one veth pair straight between the two
        namespaces, with no bridge and no host ends.
    type: bool
  nodes:
    description:
      - The virtual nodes of the host too (the C(nodes) of a vnet deployment
        plan's host, as O(vnet.infra.vnet_node#module:nodes)), only with
        O(links). One module run per host and phase converges its nodes and
        its link segments. The host is read once, the nodes' namespaces are
        planned first and the segments against them, and every command runs
        in the same few batches (with V(present) namespaces before segments,
        with V(absent) segments before namespaces).
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the namespace of the node.
        type: str
        required: true
        aliases: [netns]
      vnode:
        description: Name of the virtual node in the plan, used in messages only.
        type: str
      forwarding:
        description: Whether the node forwards IPv4.
        type: bool
        default: true
      driver:
        description: How the node is made. Only V(netns).
        type: str
        choices: [netns]
        default: netns
  state:
    description:
      - V(present) builds the segment; V(absent) removes the veth pairs, the
        tunnel device and the bridge, tolerating objects that are already gone.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - vnet.infra.common
  - vnet.infra.common.iproute
  - vnet.infra.plan
requirements:
  - C(tc) (iproute2) on the target, and a kernel with veth, bridge and vxlan.
notes:
  - With O(state=present) the namespaces of the ports must exist (create the nodes
    first), except in check mode.
seealso:
  - module: vnet.infra.vnet_node
"""

EXAMPLES = r"""
- name: One end of a virtual link that crosses two substrate hosts
  vnet.infra.vnet_link:
    bridge: vb1a2b3c4d
    ports:
      - netns: vn-lab-v1-r1
        ifname: eth0
        peer: vp5e6f7a8b
        addresses: [198.18.10.1/24]
        mtu: 1450
    tunnel:
      kind: vxlan
      device: vx1a2b3c4d
      vni: 1001
      local: 198.18.0.1
      remote: 198.18.0.2
    bandwidth_mbps: 100

- name: Remove it
  vnet.infra.vnet_link:
    bridge: vb1a2b3c4d
    ports:
      - netns: vn-lab-v1-r1
        ifname: eth0
        peer: vp5e6f7a8b
    tunnel:
      device: vx1a2b3c4d
      vni: 1001
      local: 198.18.0.1
      remote: 198.18.0.2
    state: absent

- name: Every link segment of this host in one run
  vnet.infra.vnet_link:
    links:
      - link: l1
        bridge: vb1a2b3c4d
        ports:
          - {netns: vn-lab-v1-r1, ifname: eth0, peer: vp5e6f7a8b, addresses: [198.19.0.1/30], mtu: 1500}
          - {netns: vn-lab-v1-r2, ifname: eth0, peer: vp9c8d7e6f, addresses: [198.19.0.2/30], mtu: 1500}
        bandwidth_mbps: 100
    state: present
"""

RETURN = r"""
commands:
  description: The commands run (or, in check mode, that would run), as argv lists.
  returned: always
  type: list
  elements: list
  sample: [["ip", "link", "add", "vb1a2b3c4d", "type", "bridge"], ["ip", "link", "set", "dev", "vb1a2b3c4d", "up"]]
"""

import random
from dataclasses import replace

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vnet.infra.plugins.module_utils._iproute import (
    HostState,
    LinkWant,
    VnetError,
    _load,
    link_view_have,
    link_view_want,
    link_want,
    links_before_after,
    links_left,
    links_want,
    nodes_before_after,
    nodes_left,
    nodes_want,
    plan_link,
    plan_links,
    plan_nodes,
    schedule,
)
from ansible_collections.vnet.infra.plugins.module_utils._runner import Runner, read_state

SEGMENT_OPTIONS = dict(
    ports=dict(
        type="list",
        elements="dict",
        default=[],
        options=dict(
            netns=dict(type="str", required=True),
            ifname=dict(type="str", required=True),
            peer=dict(type="str", required=True),
            addresses=dict(type="list", elements="str", default=[]),
            mtu=dict(type="int", default=1500),
            up=dict(type="bool", default=True),
        ),
    ),
    tunnel=dict(
        type="dict",
        options=dict(
            kind=dict(type="str", choices=["vxlan"], default="vxlan"),
            device=dict(type="str", required=True),
            vni=dict(type="int", required=True),
            local=dict(type="str", required=True),
            remote=dict(type="str", required=True),
            dstport=dict(type="int", default=4789),
        ),
    ),
    bandwidth_mbps=dict(type="float"),
    bridged=dict(type="bool"),
)
ARGUMENT_SPEC = dict(
    bridge=dict(type="str"),
    links=dict(
        type="list",
        elements="dict",
        options=dict(link=dict(type="str"), bridge=dict(type="str", required=True), **SEGMENT_OPTIONS),
    ),
    nodes=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str", required=True, aliases=["netns"]),
            vnode=dict(type="str"),
            forwarding=dict(type="bool", default=True),
            driver=dict(type="str", choices=["netns"], default="netns"),
        ),
    ),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    **SEGMENT_OPTIONS,
)
MUTUALLY_EXCLUSIVE = [("bridge", "links"), ("links", "ports"), ("links", "tunnel"),
                      ("links", "bandwidth_mbps"), ("links", "bridged"), ("bridge", "nodes")]
REQUIRED_ONE_OF = [("bridge", "links")]


def _read(runner: Runner, wants: tuple[LinkWant, ...]) -> HostState:
    return read_state(
        runner,
        [name for want in wants for name in want.netns_names()],
        links=True,
        qdiscs=any(want.bandwidth_mbps is not None for want in wants),
    )


def in_one_group(runner: Runner, commands: list) -> list:
    """The same removals with the host's own devices deleted in one go.

    Each ``ip link delete`` of a veth or bridge waits for the kernel's RCU
    grace period (tens of milliseconds, a few seconds for a hundred links);
    ``ip link delete group G`` unregisters all of a group's devices with one.
    The devices are put in a group that no device of the host is in (a
    random one, checked empty just before), then the group is deleted."""
    mine = [c for c in commands if c[:3] == ["ip", "link", "delete"] and len(c) == 4]
    if len(mine) < 2:
        return commands
    for _attempt in range(4):
        group = str(random.randint(1 << 20, (1 << 31) - 1))
        # iproute2 prints {} for each device outside the group
        if not any(e.get("ifname") for e in _load(runner.read(
                ["ip", "-json", "link", "show", "group", group]))):
            break
    else:
        return commands
    grouped = [["ip", "link", "set", "dev", c[3], "group", group] for c in mine]
    rest = [c for c in commands if c not in mine]
    return grouped + [["ip", "link", "delete", "group", group]] + rest


def run_host(module: AnsibleModule, runner: Runner) -> dict:
    """Nodes and link segments of one host: one read, one plan, one apply, one check."""
    params = module.params
    present = params["state"] == "present"
    nodes = nodes_want(params["nodes"], params["state"])
    links = links_want(params["links"], params["state"])
    names = [n.name for n in nodes] + [name for w in links for name in w.netns_names()]
    qdiscs = any(w.bandwidth_mbps is not None for w in links)
    # Removing every namespace its ports are in, a run need not look inside
    # them: deleting a namespace deletes what is in it. So teardown reads the
    # host three times at most (netns list, addresses, qdiscs), whatever the
    # number of nodes.
    inside = present or not set(names) <= {n.name for n in nodes}

    def read() -> HostState:
        return read_state(runner, names, links=True, qdiscs=qdiscs, forwarding=present,
                          inside=inside)

    have = read()
    node_commands = plan_nodes(nodes, have)
    # Segments are planned against the namespaces as the node commands leave
    # them: a namespace about to be made exists, with no interfaces but lo.
    made = {n.name: {} for n in nodes if present and n.name not in have.netns}
    planned_on = replace(have, netns={**have.netns, **made}) if made else have
    link_commands = plan_links(links, planned_on, check_missing_netns=not module.check_mode)
    commands = schedule(node_commands + link_commands)
    node_before, node_after = nodes_before_after(nodes, have)
    link_before, link_after = links_before_after(links, have)
    result = dict(changed=bool(commands), commands=commands,
                  diff=dict(before=dict(nodes=node_before, links=link_before),
                            after=dict(nodes=node_after, links=link_after)))
    if commands and not module.check_mode:
        if not present:
            commands = in_one_group(runner, commands)
            result["commands"] = commands
        runner.apply(commands)
        after = read()
        left = nodes_left(nodes, after) + links_left(links, after)
        if left:
            raise VnetError("virtual nodes and link segments did not converge; still to do: %s"
                            % "; ".join(left), left=left)
    return result


def run_module(module: AnsibleModule, runner: Runner) -> dict:
    params = module.params
    if params["nodes"] is not None:
        if params["links"] is None:
            raise VnetError("nodes needs links (give links: [] for nodes only)")
        return run_host(module, runner)
    single = params["links"] is None
    wants = (link_want(params),) if single else links_want(params["links"], params["state"])
    have = _read(runner, wants)
    if single:
        commands = plan_link(wants[0], have, check_missing_netns=not module.check_mode)
        before, after = link_view_have(wants[0], have), link_view_want(wants[0])
    else:
        commands = plan_links(wants, have, check_missing_netns=not module.check_mode)
        before, after = links_before_after(wants, have)
    result = dict(changed=bool(commands), commands=commands, diff=dict(before=before, after=after))
    if commands and not module.check_mode:
        runner.apply(commands)
        left = links_left(wants, _read(runner, wants))
        if left:
            raise VnetError("%s did not converge; still to do: %s" % (
                wants[0].what() if single else "link segments", "; ".join(left)), left=left)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_one_of=REQUIRED_ONE_OF,
        supports_check_mode=True,
    )
    runner = Runner(module)
    try:
        result = run_module(module, runner)
    except VnetError as exc:
        module.fail_json(msg=exc.msg, commands=runner.executed, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
