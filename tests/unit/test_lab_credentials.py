"""Players of the lab get their own key and certificate, never the CA's key."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from vnetlib.lab.players import hand_out
from vnetlib.players.config import PlayerConfig
from vnetlib.players.node import credentials_for
from vnetlib.players.pki import LabCA, Role, identity_of


def test_a_player_gets_only_its_own_credentials(tmp_path: Path) -> None:
    ca = LabCA.create(tmp_path / "pki", "test CA")
    given = hand_out(ca, tmp_path / "credentials" / "pip1", "pip1", Role.PIP)
    assert sorted(p.name for p in given.iterdir()) == ["ca.pem", "pip1.key", "pip1.pem"]
    assert (given / "pip1.key").stat().st_mode & 0o077 == 0
    assert not any("BEGIN" in p.read_text() and "PRIVATE" in p.read_text()
                   for p in given.iterdir() if p.name != "pip1.key")

    config = PlayerConfig(name="pip1", role=Role.PIP, store="sqlite:///x.db", pki=given)
    creds = credentials_for(config)
    assert creds.cert_path == given / "pip1.pem"
    who = identity_of(x509.load_pem_x509_certificate((given / "pip1.pem").read_bytes()))
    assert (who.name, who.role) == ("pip1", Role.PIP)
    # handing out again reuses the same certificate
    before = (given / "pip1.pem").read_bytes()
    hand_out(ca, given, "pip1", Role.PIP)
    assert (given / "pip1.pem").read_bytes() == before
