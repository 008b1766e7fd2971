"""The lab CA: what it issues, what it reuses, and what it refuses."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import NameOID

from vnetlib.players.pki import CRL_DAYS, Identity, LabCA, PkiError, Role, identity_of


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


# --- CRL, index, renewal, revocation ---------------------------------------


def _crl(ca: LabCA) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_path.read_bytes())


def _serial(path: Path) -> int:
    return _cert(path).serial_number


def _der(path: Path) -> bytes:
    return _cert(path).public_bytes(Encoding.DER)


def test_create_publishes_an_empty_crl_signed_by_the_ca(ca: LabCA) -> None:
    crl = _crl(ca)
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    assert crl.next_update_utc is not None
    left = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=CRL_DAYS - 1) < left <= dt.timedelta(days=CRL_DAYS)


def test_renew_keeps_name_and_role_with_a_new_key_and_serial(ca: LabCA) -> None:
    creds = ca.issue("vnp1", Role.VNP)
    old_serial, old_key = _serial(creds.cert_path), creds.key_path.read_bytes()
    again = ca.renew("vnp1")
    assert again == creds
    assert _serial(creds.cert_path) != old_serial
    assert creds.key_path.read_bytes() != old_key
    assert identity_of(_cert(creds.cert_path)) == Identity("vnp1", Role.VNP)
    assert [(c.name, c.revoked_at) for c in ca.certificates()] == [("vnp1", None)] * 2
    assert ca.issue("vnp1", Role.VNP) == creds  # the renewed pair is reused
    assert _serial(creds.cert_path) != old_serial


def test_renew_needs_an_existing_certificate(ca: LabCA) -> None:
    with pytest.raises(PkiError, match="no certificate to renew"):
        ca.renew("nobody")


def test_revoke_by_name_lists_the_serial_with_its_reason(ca: LabCA) -> None:
    creds = ca.issue("vno1", Role.VNO)
    serial = _serial(creds.cert_path)
    before = _crl(ca)
    assert ca.revoke("vno1", "key_compromise") == [serial]
    crl = _crl(ca)
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        is x509.ReasonFlags.key_compromise
    assert crl.last_update_utc > before.last_update_utc
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    # revoked is never reused: the next issue is a new pair
    ca.issue("vno1", Role.VNO)
    assert _serial(creds.cert_path) != serial
    with pytest.raises(PkiError, match="no valid certificate"):
        ca.revoke("nobody")


def test_revoke_by_serial_and_unknown_serials(ca: LabCA) -> None:
    creds = ca.issue("pip1", Role.PIP)
    old = _serial(creds.cert_path)
    ca.renew("pip1")
    assert ca.revoke(old, "superseded") == [old]
    crl = _crl(ca)
    assert crl.get_revoked_certificate_by_serial_number(old) is not None
    assert crl.get_revoked_certificate_by_serial_number(_serial(creds.cert_path)) is None
    with pytest.raises(PkiError, match="not issued"):
        ca.revoke(12345)
    with pytest.raises(PkiError, match="unknown revocation reason"):
        ca.revoke("pip1", "because")


def test_each_crl_is_strictly_later_than_the_one_before(ca: LabCA) -> None:
    ca.issue("a", Role.SP)
    ca.issue("b", Role.SP)
    first = _crl(ca).last_update_utc
    ca.revoke("a")
    ca.revoke("b")
    second = _crl(ca).last_update_utc
    assert second > first
    assert second <= dt.datetime.now(dt.UTC)  # not in the future: OpenSSL would refuse it


def test_peer_identity_refuses_a_serial_once_the_crl_file_lists_it(ca: LabCA,
                                                                   tmp_path: Path) -> None:
    server = ca.export("pip1", Role.PIP, tmp_path / "pip1")
    peer = ca.issue("vno1", Role.VNO)
    der = _der(peer.cert_path)
    assert server.peer_identity(der) == Identity("vno1", Role.VNO)
    ca.revoke("vno1")
    assert server.peer_identity(der) == Identity("vno1", Role.VNO)  # its copy is old
    ca.copy_crl(tmp_path / "pip1")
    with pytest.raises(PkiError, match=r"vno:vno1 .* is revoked"):
        server.peer_identity(der)


def test_peer_identity_reads_the_crl_again_only_when_it_changed(ca: LabCA,
                                                               tmp_path: Path) -> None:
    server = ca.export("pip1", Role.PIP, tmp_path / "pip1")
    der = _der(ca.issue("vno1", Role.VNO).cert_path)
    assert server.peer_identity(der).name == "vno1"
    crl = server.crl
    st = crl.stat()
    # Garbage of the same size, same inode, same mtime: the cached CRL stands.
    with crl.open("r+b") as f:
        f.write(b"x" * st.st_size)
    os.utime(crl, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert server.peer_identity(der).name == "vno1"
    os.utime(crl, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(PkiError, match="cannot read CRL"):
        server.peer_identity(der)


def test_peer_identity_fails_closed_without_a_crl(ca: LabCA, tmp_path: Path) -> None:
    server = ca.export("pip1", Role.PIP, tmp_path / "pip1")
    server.crl.unlink()
    with pytest.raises(PkiError, match="no CRL"):
        server.peer_identity(_der(ca.issue("vno1", Role.VNO).cert_path))
    with pytest.raises(PkiError, match="CRL"):
        server.server_context()


def test_contexts_check_the_crl_of_the_leaf(ca: LabCA) -> None:
    creds = ca.issue("pip1", Role.PIP)
    for ctx in (creds.server_context(), creds.client_context()):
        assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


# --- concurrency -------------------------------------------------------------

_WORKER = """
import sys, threading
from vnetlib.players.pki import LabCA, Role
ca = LabCA.load(sys.argv[1])
def work():
    for i in range(20):
        ca.issue(f"p{i:02d}", Role.SP)
    for _ in range(3):
        ca.renew("hot")
threads = [threading.Thread(target=work) for _ in range(10)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_issuing_from_threads_and_two_processes_at_once_is_safe(ca: LabCA) -> None:
    ca.issue("hot", Role.SP)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(ca.directory)],
                              stderr=subprocess.PIPE) for _ in range(2)]
    try:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for i in range(20):
                    ca.issue(f"p{i:02d}", Role.SP)
                for _ in range(3):
                    ca.renew("hot")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert errors == []
    index = ca.certificates()
    serials = [c.serial for c in index]
    assert len(serials) == len(set(serials))
    # every name issued exactly once (the lock makes the others reuse it),
    # and "hot" renewed 3 times by each of 20 + 2 * 10 workers
    by_name = {name: sum(c.name == name for c in index) for name in {c.name for c in index}}
    assert by_name == {**{f"p{i:02d}": 1 for i in range(20)}, "hot": 1 + 3 * 40}
    for name in by_name:
        creds = ca.credentials_paths(name)
        cert = _cert(creds.cert_path)
        key = load_pem_private_key(creds.key_path.read_bytes(), password=None)
        assert cert.public_key() == key.public_key(), name
        assert cert.serial_number in set(serials)
        assert _mode(creds.key_path) == 0o600
    leftovers = [p.name for p in (ca.directory / "players").iterdir() if p.name.startswith(".")]
    assert leftovers == []
