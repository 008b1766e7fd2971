"""A switch driver for a remote Open vSwitch over SSH (paramiko): the switch
daemon's way to program a switch it cannot reach through OVSDB directly.

The SSH side (reads as ``ovs-vsctl --format=json`` rows, one quoted
``ovs-vsctl`` transaction per change set, the host key required) is
``plugins/module_utils/_ovs_ssh.py``, which the ``vnet_vlan`` module's
``driver: ssh`` runs too; the decision is the same want/have plan as the
local driver's (:class:`vnetlib.switch.driver.BridgeDriver`)."""

from __future__ import annotations

from pathlib import Path

from vnetlib.collection import module_utils
from vnetlib.switch.driver import BridgeDriver

_ssh = module_utils("_ovs_ssh")
SshOvsSwitch = _ssh.SshOvsSwitch


class SshOvsDriver(BridgeDriver):
    """A bridge on the Open vSwitch of ``host``, reached over SSH as
    ``username`` with the private key ``key_file``; the server must prove
    ``host_key`` (an OpenSSH public key line) or be listed in ``known_hosts``."""

    def __init__(self, host: str, bridge: str, *, key_file: Path | str,
                 host_key: str | None = None, known_hosts: Path | str | None = None,
                 port: int = 22, username: str = "root", db: str | None = None,
                 datapath_type: str = "netdev", timeout: float = 10.0) -> None:
        self.host = host
        switch = SshOvsSwitch(host, key_file=str(key_file), host_key=host_key,
                              known_hosts=None if known_hosts is None else str(known_hosts),
                              port=port, username=username, db=db, timeout=timeout)
        super().__init__(switch, bridge, datapath_type)
