# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Modules fed one substrate host's part of a vnet deployment plan."""

    DOCUMENTATION = r"""
options: {}
notes:
  - The role C(vnet.infra.vnet_deploy) calls this module once per substrate host
    with that host's part of a vnet deployment plan (C(vnet_plan.hosts[HOST]),
    written by C(vnet plan) or made by vnetlib), so a host's objects are planned
    together and applied in as few commands as possible.
"""
