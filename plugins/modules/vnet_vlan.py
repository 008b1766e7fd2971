#!/usr/bin/python
# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vnet_vlan
short_description: Converge a host's VLAN access and trunk ports on its local Open vSwitch
version_added: 0.2.0
description:
  - The PIP's switch daemon gives each virtual link segment a VLAN id; this module
    sets the ports of one Open vSwitch bridge accordingly, through OVSDB (ovsdbapp),
    not by parsing C(ovs-vsctl) output.
  - A port with O(ports[].vlan) becomes an access port of that VLAN (tagged frames
    from the node are dropped by Open vSwitch); a port with O(ports[].trunks) carries
    exactly those VLANs. Ports missing from the bridge are added; ports not listed
    are left alone.
  - The bridge is made if missing (O(datapath_type), userspace C(netdev) by default,
    since the kernel datapath module is often missing on lab machines).
author: vnet developers (@vnet)
options:
  bridge:
    description: The Open vSwitch bridge.
    type: str
    required: true
  ports:
    description:
      - The ports to converge.
      - Each has exactly one of O(ports[].vlan) and O(ports[].trunks).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Port (network device) name.
        type: str
        required: true
      vlan:
        description: Access VLAN id (1 to 4094).
        type: int
      trunks:
        description: VLAN ids a trunk port carries (1 to 4094, at least one).
        type: list
        elements: int
  state:
    description: C(absent) takes the listed ports off the bridge (the bridge stays).
    type: str
    choices: [present, absent]
    default: present
  db:
    description: OVSDB connection string of the switch.
    type: str
    default: unix:/var/run/openvswitch/db.sock
  datapath_type:
    description: Datapath type of the bridge when the module makes it.
    type: str
    default: netdev
attributes:
  check_mode:
    support: full
    description: Reports the port changes, makes none.
  diff_mode:
    support: full
    description: The listed ports' VLAN settings before and after.
  idempotent:
    support: full
    description: The same ports again change nothing.
requirements:
  - ovsdbapp (Python) on the managed host, a running Open vSwitch.
"""

EXAMPLES = r"""
- name: Two nodes of a VNet on VLAN 101, the uplink trunks 101 and 102
  vnet.infra.vnet_vlan:
    bridge: vs-berlin
    db: unix:/run/vnet/lab/ovs/db.sock
    ports:
      - {name: vh1a2b3c4d, vlan: 101}
      - {name: vh5e6f7a8b, vlan: 101}
      - {name: vt-uplink, trunks: [101, 102]}

- name: Take a node's port off the switch
  vnet.infra.vnet_vlan:
    bridge: vs-berlin
    ports: [{name: vh1a2b3c4d, vlan: 101}]
    state: absent
"""

RETURN = r"""
changes:
  description: The port changes made or, in check mode, to make (op set or remove).
  type: list
  elements: dict
  returned: always
bridge_created:
  description: Whether the bridge was (or, in check mode, would be) made.
  type: bool
  returned: always
ports:
  description: The listed ports' VLAN settings after the run (name, mode, tag, trunks).
  type: list
  elements: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible_collections.vnet.infra.plugins.module_utils._ovs import (  # noqa: E402
    HAS_OVSDBAPP,
    OVSDBAPP_ERROR,
    OvsError,
    OvsSwitch,
    access,
    plan,
    trunk,
)

PORT_SPEC = {
    "name": {"type": "str", "required": True},
    "vlan": {"type": "int"},
    "trunks": {"type": "list", "elements": "int"},
}


def want_ports(params: dict) -> list:
    want = []
    for p in params["ports"]:
        if (p["vlan"] is None) == (p["trunks"] is None):
            raise OvsError(f"port {p['name']}: give exactly one of vlan and trunks")
        want.append(access(p["name"], p["vlan"]) if p["vlan"] is not None
                    else trunk(p["name"], p["trunks"]))
    return want


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    want = want_ports(p)
    present = p["state"] == "present"
    with OvsSwitch(p["db"]) as sw:
        exists = sw.has_bridge(p["bridge"])
        have = sw.ports(p["bridge"]) if exists else {}
        changes = plan(want, have, present)
        make_bridge = present and not exists
        if not module.check_mode:
            if make_bridge:
                sw.ensure_bridge(p["bridge"], p["datapath_type"])
            sw.apply(p["bridge"], changes)
    names = [w.name for w in want]
    before = {n: have[n].to_dict() for n in names if n in have}
    after = dict(before)
    for ch in changes:
        if ch.op == "remove":
            after.pop(ch.port.name, None)
        else:
            after[ch.port.name] = ch.port.to_dict()
    result = {"changed": bool(changes) or make_bridge, "bridge_created": make_bridge,
              "changes": [c.to_dict() for c in changes],
              "ports": [after[n] for n in names if n in after]}
    if module._diff:
        result["diff"] = {"before": before, "after": after,
                          "before_header": f"{p['bridge']} (running)",
                          "after_header": p["bridge"]}
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "bridge": {"type": "str", "required": True},
            "ports": {"type": "list", "elements": "dict", "default": [], "options": PORT_SPEC},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "db": {"type": "str", "default": "unix:/var/run/openvswitch/db.sock"},
            "datapath_type": {"type": "str", "default": "netdev"},
        },
        supports_check_mode=True,
    )
    if not HAS_OVSDBAPP:
        module.fail_json(msg=missing_required_lib("ovsdbapp"), exception=OVSDBAPP_ERROR)
    try:
        module.exit_json(**run_module(module))
    except OvsError as exc:
        module.fail_json(msg=f"Open vSwitch at {module.params['db']}: {exc}")


if __name__ == "__main__":
    main()
