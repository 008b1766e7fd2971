"""The local lab's layout: pure functions from a lab configuration to the
substrate description and the Ansible inventory that describe it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import netaddr

from vnetlib import naming
from vnetlib.spec.model import NodeKind, Substrate, SubstrateHost, SubstrateLink, Switch

DEFAULT_LOCATIONS = ("berlin", "london", "paris", "madrid", "rome", "vienna", "oslo", "lisbon")
HOST_OFFSET = 10
CONNECTIONS = ("netns", "ssh")


@dataclass(frozen=True, slots=True)
class LabConfig:
    """What `vnet lab up` builds: N substrate hosts behind one switch, plus a
    management network that reaches every host from the root namespace."""

    name: str = "lab"
    hosts: int = 3
    cpu: float = 4.0
    memory_mb: int = 4096
    data_network: str = "198.18.0.0/24"
    mgmt_network: str = "198.18.128.0/24"
    link_bandwidth_mbps: float = 1000.0
    locations: tuple[str, ...] = ()
    connection: str = "netns"  # how Ansible reaches the hosts: nsenter, or sshd in each host

    def __post_init__(self) -> None:
        naming.check_lab_name(self.name)
        if self.connection not in CONNECTIONS:
            raise ValueError(
                f"connection {self.connection!r} is not one of {', '.join(CONNECTIONS)}")
        if not 1 <= self.hosts <= 200:
            raise ValueError(f"a lab has 1 to 200 hosts, not {self.hosts}")
        for net in (self.data_network, self.mgmt_network):
            network = netaddr.IPNetwork(net)
            if network.size < self.hosts + HOST_OFFSET + 2:
                raise ValueError(f"network {net} is too small for {self.hosts} hosts")
            if network not in netaddr.IPNetwork("198.18.0.0/15"):
                raise ValueError(f"network {net} is outside 198.18.0.0/15, the lab's range")

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(f"h{i}" for i in range(1, self.hosts + 1))

    def data_address(self, index: int) -> str:
        return str(netaddr.IPNetwork(self.data_network).network + HOST_OFFSET + index)

    def mgmt_address(self, index: int) -> str:
        return str(netaddr.IPNetwork(self.mgmt_network).network + HOST_OFFSET + index)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabConfig:
        return cls(**{**data, "locations": tuple(data.get("locations", ()))})

    def location(self, index: int) -> str:
        names = self.locations or DEFAULT_LOCATIONS
        return names[(index - 1) % len(names)]

    @property
    def data_gateway(self) -> str:
        """The switch's address on the data network: the PIP's border router."""
        return str(netaddr.IPNetwork(self.data_network).network + 1)

    @property
    def mgmt_gateway(self) -> str:
        return str(netaddr.IPNetwork(self.mgmt_network).network + 1)

    @property
    def data_prefixlen(self) -> int:
        return netaddr.IPNetwork(self.data_network).prefixlen

    @property
    def mgmt_prefixlen(self) -> int:
        return netaddr.IPNetwork(self.mgmt_network).prefixlen


def substrate_of(config: LabConfig) -> Substrate:
    hosts = tuple(
        SubstrateHost(
            name=name,
            cpu=config.cpu,
            memory_mb=config.memory_mb,
            location=config.location(i),
            data_address=config.data_address(i),
            mgmt_address=config.mgmt_address(i),
            node_kinds=(NodeKind.NETNS, NodeKind.QEMU),
        )
        for i, name in enumerate(config.host_names, start=1)
    )
    switch = Switch(name="sw", kind="linux-bridge", ports=config.host_names)
    links = tuple(
        SubstrateLink(a=h.name, b=switch.name, bandwidth_mbps=config.link_bandwidth_mbps)
        for h in hosts
    )
    return Substrate(
        name=config.name,
        hosts=hosts,
        links=links,
        switch=switch,
        data_network=config.data_network,
        mgmt_network=config.mgmt_network,
        encapsulations=("vxlan",),
    )


def inventory_of(
    config: LabConfig, remote: Callable[[str], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An Ansible inventory that reaches each lab host through its namespace,
    or, with `remote` (the connection variables for a management address),
    over the network at its management address."""

    def reach(i: int, name: str) -> dict[str, Any]:
        if remote is not None:
            return remote(config.mgmt_address(i))
        return {
            "ansible_connection": "vnet.infra.netns",
            "ansible_netns_name": naming.host_netns(config.name, name),
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        }

    hosts = {
        name: {
            **reach(i, name),
            "vnet_data_address": config.data_address(i),
            "vnet_mgmt_address": config.mgmt_address(i),
        }
        for i, name in enumerate(config.host_names, start=1)
    }
    return {
        "all": {
            "children": {
                "substrate": {"hosts": hosts},
            },
            "vars": {"vnet_lab": config.name},
        }
    }
