"""The switch driver interface the switch daemon programs, and its local Open
vSwitch implementation through OVSDB (``plugins/module_utils/_ovs.py``).

A driver owns one bridge (one switch): node-facing ports are access ports on
one VLAN, ports towards other switches are trunks of the VLANs they carry."""

from __future__ import annotations

from typing import Any, Protocol

from vnetlib.collection import module_utils

_ovs = module_utils("_ovs")
OvsError: type[Exception] = _ovs.OvsError
PortVlan: Any = _ovs.PortVlan  # a frozen dataclass: name, mode, tag, trunks
OvsSwitch = _ovs.OvsSwitch
Change = _ovs.Change
plan = _ovs.plan
access = _ovs.access
trunk = _ovs.trunk


class SwitchDriver(Protocol):
    """What the switch daemon needs from a switch."""

    name: str

    def set_access(self, port: str, vlan: int) -> bool: ...

    def set_trunk(self, port: str, vlans: list[int]) -> bool: ...

    def remove(self, port: str) -> bool: ...

    def ports(self) -> dict[str, Any]: ...


class BridgeDriver:
    """A bridge on a switch (:class:`OvsSwitch`, or ``_ovs_ssh.SshOvsSwitch``
    over SSH), programmed port by port. Each call is a want/have/plan step:
    returns True if it changed the switch."""

    def __init__(self, switch: Any, bridge: str, datapath_type: str = "netdev") -> None:
        self.name = self.bridge = bridge
        self._sw = switch
        try:
            self._sw.ensure_bridge(bridge, datapath_type)
        except BaseException:
            self._sw.close()
            raise

    def close(self) -> None:
        self._sw.close()

    def __enter__(self) -> BridgeDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ports(self) -> dict[str, Any]:
        ports: dict[str, Any] = self._sw.ports(self.bridge)
        return ports

    def _converge(self, want: Any, present: bool = True) -> bool:
        changes = plan([want], self.ports(), present)
        self._sw.apply(self.bridge, changes)
        return bool(changes)

    def set_access(self, port: str, vlan: int) -> bool:
        return self._converge(access(port, vlan))

    def set_trunk(self, port: str, vlans: list[int]) -> bool:
        return self._converge(trunk(port, vlans))

    def remove(self, port: str) -> bool:
        return self._converge(PortVlan(port, "none"), present=False)


class OvsDriver(BridgeDriver):
    """A bridge on a local Open vSwitch, through OVSDB at ``remote``."""

    def __init__(self, remote: str, bridge: str, *, datapath_type: str = "netdev",
                 timeout: int = 10) -> None:
        super().__init__(OvsSwitch(remote, timeout=timeout), bridge, datapath_type)
