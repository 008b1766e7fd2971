#!/usr/bin/python
# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vnet_vlan
short_description: Converge VLAN access and trunk ports on an Open vSwitch, through OVSDB or SSH
version_added: 0.2.0
description:
  - The PIP's switch daemon gives each virtual link segment a VLAN id; this module
    sets the ports of one Open vSwitch bridge accordingly, through OVSDB (ovsdbapp,
    O(driver=ovsdb)) or, for a switch the host cannot reach through OVSDB, over SSH
    (paramiko, O(driver=ssh)), running C(ovs-vsctl) on the switch, its OVSDB rows read
    as JSON, each change set one transaction. Both decide with the same want/have plan,
    so check mode, diff and idempotence are the same.
  - A port with O(ports[].vlan) becomes an access port of that VLAN (tagged frames
    from the node are dropped by Open vSwitch); a port with O(ports[].trunks) carries
    exactly those VLANs. Ports missing from the bridge are added; ports not listed
    are left alone.
  - The bridge is made if missing (O(datapath_type), userspace C(netdev) by default,
    since the kernel datapath module is often missing on lab machines).
  - With O(links), the module also wires virtual link segments of the host it runs
    on to the switch, for hosts that cannot tag frames themselves (no 8021q, no
    bridge VLAN filtering). Per segment a veth pair, one end (O(links[].device)) on
    the link's bridge on this host, the other (O(links[].port)) moved into the
    switch's network namespace O(switch_netns) and made an access port of the
    segment's VLAN. Two hosts' segments of one link on the same VLAN are joined by
    the switch; tagged frames from the nodes are dropped at the access port.
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
  links:
    description: Virtual link segments of this host to wire to the switch.
    type: list
    elements: dict
    default: []
    suboptions:
      link:
        description: Virtual link id (messages only).
        type: str
        required: true
      vlan:
        description: The segment's VLAN id (2 to 4093).
        type: int
        required: true
      bridge:
        description: The link's bridge on this host (must exist).
        type: str
        required: true
      device:
        description: This host's end of the veth pair (joins O(links[].bridge)).
        type: str
        required: true
      port:
        description: The switch's end of the veth pair, an access port of the VLAN.
        type: str
        required: true
  switch_netns:
    description:
      - Network namespace of the switch (where ovs-vswitchd runs), for O(links).
      - None for the namespace the module runs in.
    type: str
  state:
    description:
      - C(absent) takes the listed ports off the bridge (the bridge stays), and deletes
        the veth pairs of O(links).
    type: str
    choices: [present, absent]
    default: present
  db:
    description:
      - OVSDB connection string of the switch.
      - With O(driver=ssh), the one C(ovs-vsctl) uses on the switch; none for its default.
    type: str
  driver:
    description: How the module reaches the switch.
    type: str
    choices: [ovsdb, ssh]
    default: ovsdb
  switch_host:
    description: The switch's management address (O(driver=ssh)).
    type: str
  switch_port:
    description: The switch's SSH port.
    type: int
    default: 22
  switch_user:
    description: The user on the switch.
    type: str
    default: root
  switch_key:
    description: Private key file that logs in to the switch (on the host the module runs on).
    type: path
  switch_host_key:
    description:
      - The switch's SSH host key, an OpenSSH public key line (C(ssh-ed25519 AAAA...)).
      - Exactly one of O(switch_host_key) and O(switch_known_hosts) with O(driver=ssh);
        a switch whose key is not known is refused (no trust on first use).
    type: str
  switch_known_hosts:
    description: A known_hosts file that lists the switch's host key.
    type: path
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
  - ovsdbapp (Python) on the managed host (O(driver=ovsdb)), or paramiko (O(driver=ssh));
    a running Open vSwitch.
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

- name: Wire two segments of a VNet on this host to the switch (VLANs 2 and 3)
  vnet.infra.vnet_vlan:
    bridge: vs-labp1
    db: unix:/run/vnet/lab/ovs/db.sock
    switch_netns: vl-labp1-switch
    links:
      - {link: l1, vlan: 2, bridge: vb1a2b3c4d, device: vx1a2b3c4d, port: vw5e6f7a8b}
      - {link: l2, vlan: 3, bridge: vb2a2b3c4d, device: vx2a2b3c4d, port: vw6e6f7a8b}

- name: The same segments, the switch's VLANs set over SSH
  vnet.infra.vnet_vlan:
    driver: ssh
    bridge: vs-labp1
    db: unix:/run/vnet/lab/ovs/db.sock
    switch_host: 198.18.1.1
    switch_key: /var/lib/vnet/substrates/labp1/switch-ssh/id_ed25519
    switch_host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcc7nUAVtHMmnKcdlUqnmLeLiQhOLiZTbQlHb9PlKvv
    switch_netns: vl-labp1-switch
    links:
      - {link: l1, vlan: 2, bridge: vb1a2b3c4d, device: vx1a2b3c4d, port: vw5e6f7a8b}

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
commands:
  description: The device commands (argv lists) of O(links) run or, in check mode, to run.
  type: list
  elements: list
  returned: always
"""

import json  # noqa: E402
import re  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible_collections.vnet.infra.plugins.module_utils._click import (  # noqa: E402
    ClickError,
    tx_checksum_off,
)
from ansible_collections.vnet.infra.plugins.module_utils._ovs import (  # noqa: E402
    HAS_OVSDBAPP,
    OVSDBAPP_ERROR,
    OvsError,
    OvsSwitch,
    access,
    plan,
    trunk,
)
from ansible_collections.vnet.infra.plugins.module_utils._ovs_ssh import (  # noqa: E402
    HAS_PARAMIKO,
    PARAMIKO_ERROR,
    SshOvsSwitch,
)

LINK_SPEC = {
    "link": {"type": "str", "required": True},
    "vlan": {"type": "int", "required": True},
    "bridge": {"type": "str", "required": True},
    "device": {"type": "str", "required": True},
    "port": {"type": "str", "required": True},
}
DEFAULT_DB = "unix:/var/run/openvswitch/db.sock"
IFNAME = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
PORT_SPEC = {
    "name": {"type": "str", "required": True},
    "vlan": {"type": "int"},
    "trunks": {"type": "list", "elements": "int"},
}


def _ip(netns: str | None, *args: str) -> list[str]:
    return ["ip", *(["-n", netns] if netns else []), *args]


def read_devices(module: AnsibleModule, netns: str | None) -> dict[str, dict]:
    """The namespace's interfaces by name (ip -json link)."""
    rc, out, err = module.run_command(_ip(netns, "-json", "link", "show"))
    if rc != 0:
        raise OvsError(f"cannot read the interfaces{' of ' + netns if netns else ''}: {err}")
    return {d["ifname"]: d for d in json.loads(out or "[]")}


def check_links(links: list) -> None:
    for lk in links:
        for key in ("bridge", "device", "port"):
            if not IFNAME.match(lk[key]):
                raise OvsError(f"link {lk['link']}: {key} {lk[key]!r} is not an interface name")
        if not 2 <= lk["vlan"] <= 4093:
            raise OvsError(f"link {lk['link']}: VLAN id {lk['vlan']} is not 2 to 4093")


def device_commands(links: list, here: dict[str, dict], there: dict[str, dict],
                    switch_netns: str | None, present: bool,
                    check_mode: bool = False) -> list[list[str]]:
    """What makes (present) or removes (absent) the segments' veth pairs (pure).
    In check mode a missing bridge is one the play's vnet_link would have made."""
    cmds: list[list[str]] = []
    for lk in links:
        dev, port = here.get(lk["device"]), there.get(lk["port"])
        if not present:
            if dev is not None:
                cmds.append(_ip(None, "link", "delete", lk["device"]))
            elif port is not None:
                cmds.append(_ip(switch_netns, "link", "delete", lk["port"]))
            continue
        if lk["bridge"] not in here and not check_mode:
            raise OvsError(f"link {lk['link']}: bridge {lk['bridge']} is missing on this host")
        if dev is None or port is None:  # a half-made pair is made again
            if dev is not None:
                cmds.append(_ip(None, "link", "delete", lk["device"]))
            elif port is not None:
                cmds.append(_ip(switch_netns, "link", "delete", lk["port"]))
            peer = ["netns", switch_netns] if switch_netns else []
            cmds.append(_ip(None, "link", "add", lk["device"], "type", "veth", "peer", "name",
                            lk["port"], *peer))
            dev = port = {}
        if dev.get("master") != lk["bridge"]:
            cmds.append(_ip(None, "link", "set", lk["device"], "master", lk["bridge"]))
        if "UP" not in dev.get("flags", []):
            cmds.append(_ip(None, "link", "set", lk["device"], "up"))
        if "UP" not in port.get("flags", []):
            cmds.append(_ip(switch_netns, "link", "set", lk["port"], "up"))
    return cmds


def run_commands(module: AnsibleModule, cmds: list[list[str]]) -> None:
    for cmd in cmds:
        rc, _out, err = module.run_command(cmd)
        if rc != 0:
            raise OvsError(f"{' '.join(cmd)}: {err.strip()}")


def want_ports(params: dict) -> list:
    want = [access(lk["port"], lk["vlan"]) for lk in params["links"]]
    for p in params["ports"]:
        if (p["vlan"] is None) == (p["trunks"] is None):
            raise OvsError(f"port {p['name']}: give exactly one of vlan and trunks")
        want.append(access(p["name"], p["vlan"]) if p["vlan"] is not None
                    else trunk(p["name"], p["trunks"]))
    return want


def switch_name(params: dict) -> str:
    if params["driver"] == "ssh":
        return f"switch {params['switch_host']}:{params['switch_port']}"
    return f"Open vSwitch at {params['db'] or DEFAULT_DB}"


def connect(params: dict) -> object:
    """The switch (OvsSwitch's interface), through OVSDB or SSH."""
    if params["driver"] == "ssh":
        return SshOvsSwitch(params["switch_host"], port=params["switch_port"],
                            username=params["switch_user"], key_file=params["switch_key"],
                            host_key=params["switch_host_key"],
                            known_hosts=params["switch_known_hosts"], db=params["db"])
    return OvsSwitch(params["db"] or DEFAULT_DB)


def open_switch(params: dict) -> tuple:
    """The switch, whether its bridge exists and its ports (the segments'
    devices are not ports until the plan says so): a switch that answers SSH
    but whose Open vSwitch is down fails here too, before any device is made."""
    sw = connect(params)
    try:
        return (sw, *sw.state(params["bridge"]))
    except BaseException:
        sw.close()
        raise


def remove_without_switch(module: AnsibleModule, exc: OvsError) -> dict:
    """Removal with the switch down: its ports went with it (a port row left in
    its database has no device when it comes back), the veth pairs still go."""
    p = module.params
    here = read_devices(module, None)
    there = read_devices(module, p["switch_netns"])
    cmds = device_commands(p["links"], here, there, p["switch_netns"], False)
    if not module.check_mode:
        run_commands(module, cmds)
    module.warn(f"{switch_name(p)} is not reachable ({exc}): "
                "only the segments' veth pairs were removed")
    return {"changed": bool(cmds), "bridge_created": False, "commands": cmds, "changes": [],
            "ports": []}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    want = want_ports(p)
    present = p["state"] == "present"
    check_links(p["links"])
    cmds: list[list[str]] = []
    try:
        sw, exists, have = open_switch(p)  # first: no device is made for a switch that is down
    except OvsError as exc:
        if present or not p["links"]:
            raise
        return remove_without_switch(module, exc)
    with sw:
        if p["links"]:
            here = read_devices(module, None)
            there = read_devices(module, p["switch_netns"])
            cmds = device_commands(p["links"], here, there, p["switch_netns"], present,
                                   module.check_mode)
            if present and not module.check_mode:
                run_commands(module, cmds)
                if cmds:  # the kernel completes checksums before OVS's packet socket
                    tx_checksum_off(None, [lk["device"] for lk in p["links"]])
        changes = plan(want, have, present)
        make_bridge = present and not exists
        if not module.check_mode:
            if make_bridge:
                sw.ensure_bridge(p["bridge"], p["datapath_type"])
            sw.apply(p["bridge"], changes)
    if not present and not module.check_mode:
        run_commands(module, cmds)
    names = [w.name for w in want]
    before = {n: have[n].to_dict() for n in names if n in have}
    after = dict(before)
    for ch in changes:
        if ch.op == "remove":
            after.pop(ch.port.name, None)
        else:
            after[ch.port.name] = ch.port.to_dict()
    result = {"changed": bool(changes) or make_bridge or bool(cmds),
              "bridge_created": make_bridge, "commands": cmds,
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
            "links": {"type": "list", "elements": "dict", "default": [], "options": LINK_SPEC},
            "switch_netns": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "db": {"type": "str"},
            "datapath_type": {"type": "str", "default": "netdev"},
            "driver": {"type": "str", "choices": ["ovsdb", "ssh"], "default": "ovsdb"},
            "switch_host": {"type": "str"},
            "switch_port": {"type": "int", "default": 22},
            "switch_user": {"type": "str", "default": "root"},
            "switch_key": {"type": "path", "no_log": True},
            "switch_host_key": {"type": "str", "no_log": False},
            "switch_known_hosts": {"type": "path"},
        },
        required_if=[("driver", "ssh", ("switch_host", "switch_key")),
                     ("driver", "ssh", ("switch_host_key", "switch_known_hosts"), True)],
        mutually_exclusive=[("switch_host_key", "switch_known_hosts")],
        supports_check_mode=True,
    )
    ssh = module.params["driver"] == "ssh"
    if ssh and not HAS_PARAMIKO:
        module.fail_json(msg=missing_required_lib("paramiko"), exception=PARAMIKO_ERROR)
    if not ssh and not HAS_OVSDBAPP:
        module.fail_json(msg=missing_required_lib("ovsdbapp"), exception=OVSDBAPP_ERROR)
    try:
        module.exit_json(**run_module(module))
    except (OvsError, ClickError) as exc:
        text = str(exc)
        name = switch_name(module.params)
        module.fail_json(msg=text if text.startswith(name) else f"{name}: {text}")


if __name__ == "__main__":
    main()
