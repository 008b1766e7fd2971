# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """What the vnet.infra modules would otherwise each write out again."""

    # The attributes every module of the collection has: check and diff mode,
    # and idempotence. A module overrides a description by giving the same
    # attribute with only a description.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Reports the commands it would run and runs none.
  diff_mode:
    support: full
    description: Returns the managed objects' state before and after.
  idempotent:
    support: full
    description: A second run with the same parameters changes nothing.
"""

    # Modules that change a substrate host's kernel with iproute2.
    IPROUTE = r"""
options: {}
requirements:
  - iproute2 (C(ip)) on the target, and root privileges.
notes:
  - In the vnet lab the target is a substrate host's network namespace, reached
    with the P(vnet.infra.netns#connection) connection.
"""
