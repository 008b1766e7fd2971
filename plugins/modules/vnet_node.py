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
author: vnet developers (@vnet)
options:
  name:
    description:
      - Name of the network namespace (a file under C(/run/netns)).
    type: str
    required: true
  state:
    description:
      - V(present) makes the namespace exist with loopback up and forwarding as
        asked; V(absent) deletes it, and with it every interface inside.
    type: str
    choices: [present, absent]
    default: present
  forwarding:
    description:
      - Whether the virtual node routes (C(net.ipv4.ip_forward) inside the namespace).
    type: bool
    default: true
  driver:
    description:
      - How the virtual node is realized. Only V(netns) is implemented.
    type: str
    choices: [netns]
    default: netns
attributes:
  check_mode:
    support: full
    description: Reports the commands it would run and runs none.
  diff_mode:
    support: full
    description: Returns the node's state before and after.
  idempotent:
    support: full
    description: A second run with the same parameters changes nothing.
requirements:
  - iproute2 (C(ip)) and procps (C(sysctl)) on the target, root privileges.
notes:
  - Namespaces are created with C(ip netns add); in the vnet lab the target is
    itself a namespace reached with the P(vnet.infra.netns#connection) connection.
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
    node_want,
    plan_node,
)
from ansible_collections.vnet.infra.plugins.module_utils._runner import Runner, read_node

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    forwarding=dict(type="bool", default=True),
    driver=dict(type="str", choices=["netns"], default="netns"),
)


def run_module(module: AnsibleModule, runner: Runner) -> dict:
    want = node_want(module.params)
    have = read_node(runner, want.name)
    commands = plan_node(want, have)
    before, after = node_before_after(want, have)
    if commands and not module.check_mode:
        runner.apply(commands)
    return dict(changed=bool(commands), commands=commands, diff=dict(before=before, after=after))


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    runner = Runner(module)
    try:
        result = run_module(module, runner)
    except VnetError as exc:
        module.fail_json(msg=exc.msg, commands=runner.executed, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
