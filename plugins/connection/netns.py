# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a named network namespace on the controller
description:
  - Runs commands on the Ansible controller inside a named Linux network
    namespace (C(/run/netns/NAME)), the way the vnet local lab reaches its
    substrate hosts.
  - Files are copied locally (the namespace shares the controller's file
    system), so C(ansible_python_interpreter) and temporary directories are
    the controller's.
  - Based on the C(ansible.builtin.local) connection plugin.
author: vnet developers (@vnet)
version_added: 0.1.0
options:
  netns_name:
    description:
      - Name of the network namespace to run in (a file under C(/run/netns)).
      - Defaults to the inventory hostname.
    type: str
    vars:
      - name: inventory_hostname
      - name: ansible_netns_name
  netns_method:
    description:
      - How to enter the namespace.
      - V(nsenter) enters only the network namespace (C(nsenter --net=/run/netns/NAME)),
        so mounts made by commands, such as C(ip netns add) creating the
        namespaces of virtual nodes, stay visible to the whole controller.
      - V(ip) uses C(ip netns exec NAME), which also gives the command a private
        mount namespace with the namespace's C(/sys) and C(/etc/netns/NAME) files;
        namespaces created from inside it are not usable from outside.
    type: str
    default: nsenter
    choices: [nsenter, ip]
    vars:
      - name: ansible_netns_method
  become_success_timeout:
    type: int
    default: 10
    description:
      - Number of seconds to wait for become to succeed when enabled.
    vars:
      - name: ansible_local_become_success_timeout
  become_strip_preamble:
    type: bool
    default: true
    description:
      - Strip internal become output preceding command execution.
    vars:
      - name: ansible_local_become_strip_preamble
extends_documentation_fragment:
  - connection_pipelining
notes:
  - Needs root (or CAP_SYS_ADMIN) on the controller to enter the namespace.
  - The remote user is ignored, the user running Ansible is used instead.
"""

EXAMPLES = r"""
# inventory.yml: a lab substrate host that is a network namespace
# all:
#   hosts:
#     h1:
#       ansible_connection: vnet.infra.netns
#       ansible_netns_name: vl-lab-h1
#       ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""

import os
import shlex

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.utils.display import Display

display = Display()

NETNS_DIR = "/run/netns"


class Connection(LocalConnection):
    """Local execution inside a named network namespace."""

    transport = "vnet.infra.netns"
    has_pipelining = True

    def _netns(self) -> str:
        name = self.get_option("netns_name") or self._play_context.remote_addr
        if not name or "/" in name or name in (".", ".."):
            raise AnsibleConnectionFailure("invalid network namespace name %r" % (name,))
        return name

    def _connect(self) -> LocalConnection:
        name = self._netns()
        if not os.path.exists(os.path.join(NETNS_DIR, name)):
            raise AnsibleConnectionFailure(
                "network namespace %s does not exist (no %s/%s)" % (name, NETNS_DIR, name)
            )
        if not self._connected:
            display.vvv("ESTABLISH NETNS CONNECTION TO %s" % name, host=name)
        return super()._connect()

    def wrap_command(self, cmd: str) -> str:
        """The shell command line that runs `cmd` inside the namespace."""
        name = self._netns()
        if self.get_option("netns_method") == "ip":
            prefix = ["ip", "netns", "exec", name]
        else:
            prefix = ["nsenter", "--net=%s/%s" % (NETNS_DIR, name), "--"]
        return " ".join(shlex.quote(a) for a in prefix + ["/bin/sh", "-c", cmd])

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        """Run a command in the namespace."""
        if not isinstance(cmd, str):
            cmd = to_text(cmd) if isinstance(cmd, bytes) else " ".join(shlex.quote(to_text(c)) for c in cmd)
        return super().exec_command(self.wrap_command(cmd), in_data=in_data, sudoable=sudoable)
