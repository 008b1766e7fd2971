"""The lab CA: what it issues, what it reuses, and what it refuses."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from vnetlib.players.pki import Identity, LabCA, PkiError, Role, identity_of


@pytest.fixture
def ca(tmp_path: Path) -> LabCA:
    return LabCA.create(tmp_path / "ca", "test lab")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_a_ca_with_a_private_key(ca: LabCA) -> None:
    assert _mode(ca.directory / "ca.key") == 0o600
    cert = _cert(ca.cert_path)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.name == "test lab"


def test_create_again_loads_the_same_ca(ca: LabCA) -> None:
    again = LabCA.create(ca.directory, "test lab")
    assert again.cert == ca.cert
    assert LabCA.load(ca.directory).cert == ca.cert


def test_create_refuses_a_different_name_in_the_same_directory(ca: LabCA) -> None:
    with pytest.raises(PkiError, match="already holds CA 'test lab'"):
        LabCA.create(ca.directory, "other lab")


def test_load_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"LabCA\.create"):
        LabCA.load(tmp_path)


def test_issue_puts_name_role_and_hosts_in_the_certificate(ca: LabCA) -> None:
    creds = ca.issue("pip-1", Role.PIP)
    cert = _cert(creds.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pip-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "pip"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "urn:vnet:role:pip" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca.cert)
    assert _mode(creds.key_path) == 0o600
    assert creds.ca_path == ca.cert_path


def test_issue_is_idempotent(ca: LabCA) -> None:
    first = ca.issue("vno1", "vno")
    pem, key = first.cert_path.read_bytes(), first.key_path.read_bytes()
    again = ca.issue("vno1", Role.VNO)
    assert again == first
    assert first.cert_path.read_bytes() == pem
    assert first.key_path.read_bytes() == key


def test_issue_refuses_another_role_for_an_existing_name(ca: LabCA) -> None:
    ca.issue("vnp1", Role.VNP)
    with pytest.raises(PkiError, match="already has a vnp certificate"):
        ca.issue("vnp1", Role.PIP)


def test_issue_replaces_a_certificate_from_another_ca(ca: LabCA, tmp_path: Path) -> None:
    other = LabCA.create(tmp_path / "other", "other lab")
    foreign = other.issue("pip1", Role.PIP)
    mine = ca.credentials_paths("pip1")
    mine.cert_path.parent.mkdir(parents=True, exist_ok=True)
    mine.cert_path.write_bytes(foreign.cert_path.read_bytes())
    mine.key_path.write_bytes(foreign.key_path.read_bytes())
    ca.issue("pip1", Role.PIP)
    _cert(mine.cert_path).verify_directly_issued_by(ca.cert)


def test_issue_replaces_a_pair_whose_key_does_not_match(ca: LabCA) -> None:
    a = ca.issue("a", Role.SP)
    b = ca.issue("b", Role.SP)
    a.key_path.write_bytes(b.key_path.read_bytes())
    ca.issue("a", Role.SP)
    assert a.key_path.read_bytes() != b.key_path.read_bytes()


@pytest.mark.parametrize("name", ["", "UPPER", "../x", "a b", "-lead", "x" * 64])
def test_bad_player_names_are_refused(ca: LabCA, name: str) -> None:
    with pytest.raises(PkiError, match="bad player name"):
        ca.issue(name, Role.PIP)


def test_identity_of_reads_pem_parsed_and_der(ca: LabCA) -> None:
    cert = _cert(ca.issue("vnp-a", Role.VNP).cert_path)
    assert identity_of(cert) == Identity("vnp-a", Role.VNP)
    assert identity_of(cert.public_bytes(Encoding.DER)) == Identity("vnp-a", Role.VNP)
    assert str(identity_of(cert)) == "vnp:vnp-a"


def test_identity_of_refuses_a_certificate_without_role(tmp_path: Path) -> None:
    # A CA certificate has a CN but no subjectAltName with a role.
    plain = LabCA.create(tmp_path / "plain", "plain")
    with pytest.raises(PkiError, match="subjectAltName"):
        identity_of(plain.cert)


def test_contexts_load(ca: LabCA) -> None:
    creds = ca.issue("pip1", Role.PIP)
    assert creds.server_context().verify_mode.name == "CERT_REQUIRED"
    assert creds.client_context().check_hostname
