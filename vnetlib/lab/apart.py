"""Players on their own management hosts: `vnet lab up --players-apart`.

Every player (each PIP, the VNP, the VNO) runs in a network namespace of its
own, `vl-LAB-PLAYER`, with one address on the lab's players network (a bridge
in the root namespace, which keeps the network's first address: the service
provider on this machine reaches the VNO there). A PIP has a second leg on
its own substrate's management network, where its hosts' sshd listen, the
way a PIP's management node sits in its own rack. Players reach each other
only through the players network; each one's certificate names its address,
so a client that calls it there checks the name as it would on the Internet.

The players network is 198.18.(128 + offset + pips + 1).0/24, the one after
the PIPs' management networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import netaddr
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vnetlib import naming
from vnetlib.lab.kernel import (
    Changes,
    attach_up,
    ensure_addr,
    ensure_bridge,
    ensure_netns,
    ensure_veth,
    namespace,
)
from vnetlib.lab.layout import LabConfig
from vnetlib.players.pki import SERVER_HOSTS, Credentials, Identity, LabCA, Role, _Index

PLAYERS_IF = "pm0"  # a player's leg on the players network
SUBSTRATE_IF = "sm0"  # a PIP's leg on its substrate's management network
PIP_MGMT_HOST = 2  # a PIP's address on its substrate's management network: .2
VNP_HOST, VNO_HOST, PIP_HOST_OFFSET = 2, 3, 10


@dataclass(frozen=True, slots=True)
class PlayerHost:
    """Where one player runs: its namespace and its management address."""

    name: str
    netns: str
    address: str
    substrate: LabConfig | None = None  # a PIP's substrate

    @property
    def substrate_address(self) -> str | None:
        if self.substrate is None:
            return None
        return str(netaddr.IPNetwork(self.substrate.mgmt_network).network + PIP_MGMT_HOST)


@dataclass(frozen=True, slots=True)
class PlayersNetwork:
    lab: str
    network: str

    @property
    def gateway(self) -> str:
        """The root namespace's address: where the lab's SP is."""
        return str(netaddr.IPNetwork(self.network).network + 1)

    @property
    def prefixlen(self) -> int:
        return netaddr.IPNetwork(self.network).prefixlen

    @property
    def bridge(self) -> str:
        return f"{naming.root_link_prefix(self.lab)}pm"

    def address(self, host: int) -> str:
        return str(netaddr.IPNetwork(self.network).network + host)

    def host(self, name: str, substrate: LabConfig | None = None, index: int = 0) -> PlayerHost:
        number = {"vnp": VNP_HOST, "vno": VNO_HOST}.get(name, PIP_HOST_OFFSET + index)
        return PlayerHost(name, naming.host_netns(self.lab, name), self.address(number), substrate)


def players_network(lab: str, mgmt_offset: int, pips: int) -> PlayersNetwork:
    return PlayersNetwork(lab, f"198.18.{128 + mgmt_offset + pips + 1}.0/24")


def _port(lab: str, player: str) -> str:
    """The root namespace's end of a player's veth (IFNAMSIZ: 15 bytes)."""
    name = f"{naming.root_link_prefix(lab)}{player}"
    if len(name) > naming.IFNAME_MAX:
        name = f"{naming.root_link_prefix(lab)}{naming.short_hash(player, length=4)}"
    return name


def up(net: PlayersNetwork, hosts: Sequence[PlayerHost]) -> Changes:
    """The players network and each player's namespace on it; idempotent."""
    changes = Changes()
    with namespace(None) as root:
        bridge = ensure_bridge(root, net.bridge, "root namespace", changes)
        ensure_addr(root, bridge, net.gateway, net.prefixlen)
    for player in hosts:
        ensure_netns(player.netns, changes)
        legs = [(PLAYERS_IF, _port(net.lab, player.name), net.bridge, player.address,
                 net.prefixlen)]
        if player.substrate is not None and player.substrate_address is not None:
            sub = player.substrate
            legs.append((SUBSTRATE_IF, f"{naming.root_link_prefix(sub.name)}mp",
                         naming.mgmt_bridge(sub.name), player.substrate_address,
                         sub.mgmt_prefixlen))
        for inner, outer, bridge_name, address, prefixlen in legs:
            ensure_veth(None, outer, player.netns, inner, changes)
            with namespace(None) as root:
                master = root.link_lookup(ifname=bridge_name)
                if not master:
                    raise RuntimeError(f"bridge {bridge_name} is missing in the root namespace")
                attach_up(root, outer, master[0])
            with namespace(player.netns) as ipr:
                idx = attach_up(ipr, inner, None)
                ensure_addr(ipr, idx, address, prefixlen)
    return changes


class AddressedCA(LabCA):
    """The lab CA, issuing certificates that also name each player's
    management address (besides 127.0.0.1 and localhost), so TLS clients
    calling a player at that address accept it and no other address.

    A pair that does not name the address it is asked for is not reused.
    """

    addresses: dict[str, tuple[str, ...]]

    def __init__(self, directory: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(directory, cert, key)
        self.addresses = {}

    def with_addresses(self, addresses: dict[str, tuple[str, ...]]) -> AddressedCA:
        self.addresses = dict(addresses)
        return self

    def _new_pair(self, index: _Index, player_name: str, role: Role,
                  days: int, addresses: Sequence[str] = ()) -> Credentials:
        wanted = (*addresses, *self.addresses.get(player_name, ()))
        return super()._new_pair(index, player_name, role, days, tuple(dict.fromkeys(wanted)))

    def _reusable(self, creds: Credentials, revoked: set[int]) -> Identity | None:
        identity = super()._reusable(creds, revoked)
        if identity is None:
            return None
        wanted = set(self.addresses.get(identity.name, ()))
        return identity if wanted <= set(cert_addresses(creds.cert_path)) else None


def cert_addresses(path: Path) -> list[str]:
    """The IP addresses a certificate file names (SAN), loopback included."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(a) for a in san.get_values_for_type(x509.IPAddress)]


__all__ = ["SERVER_HOSTS", "AddressedCA", "PlayerHost", "PlayersNetwork", "cert_addresses",
           "players_network", "up"]
