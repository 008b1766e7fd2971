"""The lab's name for `vnetlib.hosts` (commands run on a substrate host as
Ansible reaches it)."""

from vnetlib.hosts import (
    NETNS_CONNECTIONS,
    SSH_CONNECTIONS,
    Hosts,
    UnknownHost,
    command,
    control_name,
    host_vars,
    is_ssh,
)

__all__ = ["NETNS_CONNECTIONS", "SSH_CONNECTIONS", "Hosts", "UnknownHost", "command",
           "control_name", "host_vars", "is_ssh"]
