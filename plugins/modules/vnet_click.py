#!/usr/bin/python
# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vnet_click
short_description: Carry one VNet's virtual link segments on a host's Click process
version_added: 0.2.0
description:
  - One Click modular router process per substrate host carries the segments of
    every VNet's virtual links that cross hosts. This module sets one VNet's share
    (O(vnet)) and leaves the other VNets' segments alone.
  - Per segment, a veth pair; one end (O(links[].device)) joins the link's bridge,
    the other (O(links[].click_device)) is read and written by Click. Frames go to
    the peer host in UDP (port O(port)) with a VXLAN-format header carrying the
    segment's tunnel id, outer headers built by Click and sent on a raw socket.
    Optional bandwidth (Click C(BandwidthRatedUnqueue)) and one-way latency
    (C(DelayUnqueue)) per segment.
  - The first segment starts Click (C(click -R -u SOCKET)) in the host's namespace
    (O(netns)); later changes are hot swaps through the control socket's
    C(hotconfig) handler, so running segments of other VNets lose no packet.
    With no segment left on the host, Click is stopped.
author: vnet developers (@vnet)
options:
  vnet:
    description:
      - The VNet whose segments these are (one state file per VNet).
      - Letters, digits, C(.), C(_) and C(-), not starting with a dot.
    type: str
    required: true
  links:
    description: This VNet's segments on the host.
    type: list
    elements: dict
    default: []
    suboptions:
      link:
        description: Virtual link id (messages only); letters, digits, C(.), C(_), C(:) and C(-).
        type: str
        required: true
      vni:
        description: Tunnel id of the link (24 bits), the same on both hosts.
        type: int
        required: true
      bridge:
        description: The link's bridge on this host (made if missing); interface names are 1-15 letters, digits, C(_), C(-).
        type: str
        required: true
      device: {description: Bridge end of the segment's veth pair., type: str, required: true}
      click_device: {description: Click's end of the veth pair., type: str, required: true}
      local: {description: This host's substrate address (IPv4)., type: str, required: true}
      remote: {description: The peer host's substrate address (IPv4)., type: str, required: true}
      bandwidth_mbps: {description: Bandwidth towards the peer in Mbit/s., type: float}
      latency_ms: {description: One-way delay added towards the peer in ms., type: float}
  state:
    description: C(absent) removes this VNet's segments (and stops Click if none is left).
    type: str
    choices: [present, absent]
    default: present
  netns:
    description: Network namespace of the substrate host (lab hosts); none for the host itself.
    type: str
  instance:
    description:
      - Name of the host's Click instance (its state directory).
      - Defaults to O(netns), or C(host).
      - Letters, digits, C(.), C(_) and C(-), not starting with a dot.
    type: str
  port:
    description: UDP port of the tunnels.
    type: int
    default: 47900
  click:
    description:
      - Path of the click binary.
      - Default C($VNET_CLICK), or the build cached by C(scripts/install-click.sh).
    type: str
  rundir:
    description: Directory of the instances' state.
    type: path
    default: /run/vnet/click
attributes:
  check_mode:
    support: full
    description: Reports the configuration change and device commands, runs none.
  diff_mode:
    support: full
    description: The running Click configuration before and after.
  idempotent:
    support: full
    description: The same segments again change nothing (no hot swap).
requirements:
  - Click user-level (scripts/install-click.sh), iproute2, root privileges.
"""

EXAMPLES = r"""
- name: Carry the VNet's crossing links with Click
  vnet.infra.vnet_click:
    vnet: fig6-1
    netns: vl-lab-h1
    links:
      - {link: l1, vni: 5001, bridge: vb1a2b3c4d, device: vx1a2b3c4d, click_device: ck1a2b3c4d,
         local: 198.18.0.1, remote: 198.18.0.2, bandwidth_mbps: 100}
"""

RETURN = r"""
action:
  description: What happened to the Click process (none, start, hotswap, stop).
  type: str
  returned: always
commands:
  description: The device commands (argv lists) run or, in check mode, to run.
  type: list
  returned: always
config:
  description: The host's Click configuration after the run.
  type: str
  returned: always
"""

from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vnet.infra.plugins.module_utils._click import (  # noqa: E402
    ClickError,
    Instance,
    apply,
)
from ansible_collections.vnet.infra.plugins.module_utils._click_config import (  # noqa: E402
    ClickConfigError,
    ClickLink,
)

LINK_SPEC = {
    "link": {"type": "str", "required": True},
    "vni": {"type": "int", "required": True},
    "bridge": {"type": "str", "required": True},
    "device": {"type": "str", "required": True},
    "click_device": {"type": "str", "required": True},
    "local": {"type": "str", "required": True},
    "remote": {"type": "str", "required": True},
    "bandwidth_mbps": {"type": "float"},
    "latency_ms": {"type": "float"},
}


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    inst = Instance(name=p["instance"] or p["netns"] or "host", netns=p["netns"],
                    rundir=Path(p["rundir"]))
    links = [ClickLink(**lk) for lk in p["links"]]
    out = apply(inst, p["vnet"], links, present=p["state"] == "present", click=p["click"],
                port=p["port"], check_mode=module.check_mode)
    result = {"changed": out.changed, "action": out.action,
              "commands": [list(c) for c in out.commands], "config": out.after}
    if module._diff:
        result["diff"] = {"before": out.before, "after": out.after,
                          "before_header": f"click {inst.name} (running)",
                          "after_header": f"click {inst.name}"}
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "vnet": {"type": "str", "required": True},
            "links": {"type": "list", "elements": "dict", "default": [], "options": LINK_SPEC},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "netns": {"type": "str"},
            "instance": {"type": "str"},
            "port": {"type": "int", "default": 47900},
            "click": {"type": "str"},
            "rundir": {"type": "path", "default": "/run/vnet/click"},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run_module(module))
    except (ClickError, ClickConfigError, OSError) as exc:
        host = module.params["netns"] or "this host"
        module.fail_json(msg=f"Click on {host}: {exc}")


if __name__ == "__main__":
    main()
