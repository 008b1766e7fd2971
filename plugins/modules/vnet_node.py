#!/usr/bin/python
# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vnet_node
short_description: Manage a virtual node of a vnet virtual network
version_added: 0.1.0
description:
  - Creates or deletes the network namespace that realizes a virtual node on a
    substrate host, brings its loopback up and sets IPv4 forwarding in it.
  - Reads the current state with C(ip -json), plans the difference and runs only
    the commands needed (argv lists); returns them in RV(commands).
  - Manages one node (O(name)) or, in one run, every node of a host
    (O(nodes)), reading the host's state once, planning every command before
    any runs and running them as few C(ip -batch) processes.
author: vnet developers (@vnet)
options:
  name:
    description:
      - Name of the network namespace (a file under C(/run/netns)).
      - Exactly one of O(name) and O(nodes) is required.
    type: str
  nodes:
    description:
      - Every virtual node of the host, as a list (the C(nodes) of a vnet
        deployment plan's host). Mutually exclusive with O(name),
        O(forwarding) and O(driver), which are per node here.
      - Planning errors of all nodes are reported together, before any command runs.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the network namespace.
        type: str
        required: true
        aliases: [netns]
      vnode:
        description: Name of the virtual node in the plan, used in messages only.
        type: str
      forwarding:
        description: Whether the virtual node routes.
        type: bool
        default: true
      driver:
        description: How the virtual node is realized. Only V(netns) is implemented.
        type: str
        choices: [netns]
        default: netns
  state:
    description:
      - V(present) makes the namespace exist with loopback up and forwarding as
        asked; V(absent) deletes it, and with it every interface inside.
      - With O(nodes), applies to every node.
    type: str
    choices: [present, absent]
    default: present
  forwarding:
    description:
      - Whether the virtual node routes (C(net.ipv4.ip_forward) inside the namespace).
      - Only with O(name); default V(true).
    type: bool
  driver:
    description:
      - How the virtual node is realized. Only V(netns) is implemented.
      - Only with O(name); default V(netns).
    type: str
    choices: [netns]
extends_documentation_fragment:
  - vnet.infra.common
  - vnet.infra.common.iproute
  - vnet.infra.plan
requirements:
  - procps (C(sysctl)) on the target.
notes:
  - Namespaces are created with C(ip netns add).
seealso:
  - module: vnet.infra.vnet_link
"""

EXAMPLES = r"""
- name: Create a routing virtual node
  vnet.infra.vnet_node:
    name: vn-lab-v1-r1
    forwarding: true

- name: Delete it
  vnet.infra.vnet_node:
    name: vn-lab-v1-r1
    state: absent

- name: Every virtual node of this host in one run
  vnet.infra.vnet_node:
    nodes:
      - {vnode: r1, netns: vn-lab-v1-r1, forwarding: true}
      - {vnode: e1, netns: vn-lab-v1-e1, forwarding: false}
    state: present
"""

RETURN = r"""
commands:
  description: The commands run (or, in check mode, that would run), as argv lists.
  returned: always
  type: list
  elements: list
  sample: [["ip", "netns", "add", "vn-lab-v1-r1"], ["ip", "-n", "vn-lab-v1-r1", "link", "set", "lo", "up"]]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vnet.infra.plugins.module_utils._iproute import (
    VnetError,
    node_before_after,
    node_have,
    node_want,
    nodes_before_after,
    nodes_left,
    nodes_want,
    plan_nodes,
)
from ansible_collections.vnet.infra.plugins.module_utils._runner import Runner, read_state

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
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
    forwarding=dict(type="bool"),
    driver=dict(type="str", choices=["netns"]),
)
MUTUALLY_EXCLUSIVE = [("name", "nodes"), ("nodes", "forwarding"), ("nodes", "driver")]
REQUIRED_ONE_OF = [("name", "nodes")]


def run_module(module: AnsibleModule, runner: Runner) -> dict:
    params = module.params
    single = params["nodes"] is None
    wants = (node_want(params),) if single else nodes_want(params["nodes"], params["state"])
    present = params["state"] == "present"
    names = [w.name for w in wants]
    have = read_state(runner, names, inside=present, forwarding=present)
    commands = plan_nodes(wants, have)
    if single:
        before, after = node_before_after(wants[0], node_have(have, wants[0].name))
    else:
        before, after = nodes_before_after(wants, have)
    result = dict(changed=bool(commands), commands=commands, diff=dict(before=before, after=after))
    if commands and not module.check_mode:
        runner.apply(commands)
        left = nodes_left(wants, read_state(runner, names, inside=present, forwarding=present))
        if left:
            raise VnetError("virtual nodes did not converge; still to do: %s" % "; ".join(left), left=left)
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
