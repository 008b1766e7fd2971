"""vnetlib.lab.apart: where players run when apart, and certificates that
name their addresses."""

from __future__ import annotations

from pathlib import Path

from vnetlib.lab import apart
from vnetlib.lab.layout import LabConfig
from vnetlib.players.pki import LabCA, Role, identity_of_file


def test_players_network_follows_the_pips_management_networks() -> None:
    net = apart.players_network("lab", 20, 2)
    assert net.network == "198.18.151.0/24" and net.gateway == "198.18.151.1"
    sub = LabConfig(name="labp1", mgmt_network="198.18.149.0/24")
    pip = net.host("pip1", sub, 1)
    assert (pip.netns, pip.address, pip.substrate_address) == (
        "vl-lab-pip1", "198.18.151.11", "198.18.149.2")
    assert net.host("vnp").address == "198.18.151.2"
    assert net.host("vno").address == "198.18.151.3"


def test_addressed_ca_names_the_address_and_reissues_a_pair_without_it(tmp_path: Path) -> None:
    plain = LabCA.create(tmp_path / "ca", "test CA")
    old = plain.issue("pip1", Role.PIP)
    assert "198.18.151.11" not in apart.cert_addresses(old.cert_path)
    before = old.cert_path.read_bytes()
    ca = apart.AddressedCA.create(tmp_path / "ca", "test CA")
    assert isinstance(ca, apart.AddressedCA)
    ca.with_addresses({"pip1": ("198.18.151.11",)})
    creds = ca.issue("pip1", Role.PIP)
    assert creds.cert_path.read_bytes() != before
    assert set(apart.cert_addresses(creds.cert_path)) == {"127.0.0.1", "198.18.151.11"}
    assert identity_of_file(creds.cert_path).role is Role.PIP
    again = ca.issue("pip1", Role.PIP)  # now it names the address: reused
    assert again.cert_path.read_bytes() == creds.cert_path.read_bytes()
