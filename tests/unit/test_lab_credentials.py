"""Players of the lab get their own key and certificate, the CA certificate
and its CRL, never the CA's key; a player directory with any other private
key is refused; revocations and renewals reach every player's directory."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cryptography import x509

from vnetlib.lab import players as lab_players
from vnetlib.lab.players import credentials_dir, hand_out, pki_dir
from vnetlib.players.config import PlayerConfig
from vnetlib.players.node import credentials_for
from vnetlib.players.pki import LabCA, PkiError, Role, identity_of


def _config(name: str, role: Role, pki: Path) -> PlayerConfig:
    return PlayerConfig(name=name, role=role, store="sqlite:///x.db", pki=pki)


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.fixture
def ca(tmp_path: Path) -> LabCA:
    return LabCA.create(tmp_path / "pki", "test CA")


def test_a_player_gets_only_its_own_credentials(ca: LabCA, tmp_path: Path) -> None:
    given = hand_out(ca, tmp_path / "credentials" / "pip1", "pip1", Role.PIP)
    assert sorted(p.name for p in given.iterdir()) == ["ca.pem", "crl.pem", "pip1.key",
                                                       "pip1.pem"]
    assert (given / "pip1.key").stat().st_mode & 0o077 == 0
    assert not any(b"PRIVATE" in p.read_bytes() for p in given.iterdir()
                   if p.name != "pip1.key")
    assert (given / "crl.pem").read_bytes() == ca.crl_path.read_bytes()

    creds = credentials_for(_config("pip1", Role.PIP, given))
    assert (creds.cert_path, creds.key_path, creds.ca_path, creds.crl) == (
        given / "pip1.pem", given / "pip1.key", given / "ca.pem", given / "crl.pem")
    who = identity_of(x509.load_pem_x509_certificate((given / "pip1.pem").read_bytes()))
    assert (who.name, who.role) == ("pip1", Role.PIP)
    # handing out again reuses the same certificate
    before = (given / "pip1.pem").read_bytes()
    hand_out(ca, given, "pip1", Role.PIP)
    assert (given / "pip1.pem").read_bytes() == before


def test_the_ca_directory_is_refused_naming_the_ca_key(ca: LabCA) -> None:
    ca.issue("pip1", Role.PIP)
    with pytest.raises(PkiError, match=re.escape(f"{ca.directory / 'ca.key'}: a player's")):
        credentials_for(_config("pip1", Role.PIP, ca.directory))


def test_a_ca_key_under_any_name_is_refused(ca: LabCA, tmp_path: Path) -> None:
    given = hand_out(ca, tmp_path / "pip1", "pip1", Role.PIP)
    shutil.copy(ca.directory / "ca.key", given / "backup.pem")
    with pytest.raises(PkiError, match=re.escape(f"{given / 'backup.pem'} holds a private key")):
        credentials_for(_config("pip1", Role.PIP, given))
    (given / "backup.pem").unlink()
    shutil.copy(ca.directory / "ca.key", given / "pip1.key")
    with pytest.raises(PkiError, match="is the CA key"):
        credentials_for(_config("pip1", Role.PIP, given))


def test_missing_files_and_a_wrong_role_are_refused(ca: LabCA, tmp_path: Path) -> None:
    given = hand_out(ca, tmp_path / "vno1", "vno1", Role.VNO)
    with pytest.raises(PkiError, match="names vno:vno1, not pip:vno1"):
        credentials_for(_config("vno1", Role.PIP, given))
    (given / "crl.pem").unlink()
    with pytest.raises(PkiError, match=r"missing crl\.pem"):
        credentials_for(_config("vno1", Role.VNO, given))


def test_lab_revocation_reaches_every_player_and_renewal_its_own(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    ca = LabCA.create(pki_dir(lab), "lab CA")
    for name, role in (("pip1", Role.PIP), ("vnp", Role.VNP), ("vno", Role.VNO)):
        hand_out(ca, credentials_dir(lab, name), name, role)
    serial = _serial(credentials_dir(lab, "pip1") / "pip1.pem")

    assert lab_players.revoke(lab, "pip1", "key_compromise") == [serial]
    for name in ("pip1", "vnp", "vno"):
        crl = x509.load_pem_x509_crl((credentials_dir(lab, name) / "crl.pem").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None, name

    before = _serial(credentials_dir(lab, "vnp") / "vnp.pem")
    lab_players.renew(lab, "vnp")
    after = _serial(credentials_dir(lab, "vnp") / "vnp.pem")
    assert after != before
    assert credentials_for(_config("vnp", Role.VNP, credentials_dir(lab, "vnp")))
