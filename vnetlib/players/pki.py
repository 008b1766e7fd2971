"""The lab's own certificate authority, and who a peer certificate says it is.

Every management node (PIP, VNP, VNO) and every SP client holds a certificate
issued by the lab CA. One certificate serves both ends of mutual TLS: it is
valid for 127.0.0.1 and localhost as a server, and carries the player's name
(subject CN) and role (subject OU and a SAN URI ``urn:vnet:role:<role>``) so a
server can tell which player is calling. The role is read from the SAN URI,
which is the one place a name constraint-aware verifier would look; the OU is
there for humans reading ``openssl x509 -text``.

Layout of a CA directory::

    ca.pem, ca.key             the authority (key 0600)
    players/<name>.pem, .key   one pair per player (key 0600)

Keys are EC P-256. Files are written to a temporary name and renamed, so a
crash never leaves half a key behind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_URI_PREFIX = "urn:vnet:role:"
PLAYER_URI_PREFIX = "urn:vnet:player:"
ORGANIZATION = "vnet lab"
SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")

CA_DAYS = 3650
PLAYER_DAYS = 365
# A certificate closer than this to its end is re-issued rather than reused.
RENEW_BEFORE = dt.timedelta(days=7)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class PkiError(Exception):
    """A CA or certificate problem; the message names the file or the field."""


class Role(StrEnum):
    PIP = "pip"
    VNP = "vnp"
    VNO = "vno"
    SP = "sp"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end of a connection, as its certificate says."""

    name: str
    role: Role

    def __str__(self) -> str:
        return f"{self.role.value}:{self.name}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Paths of a player's certificate, its key, and the CA that vouches for peers."""

    cert_path: Path
    key_path: Path
    ca_path: Path

    def server_context(self) -> ssl.SSLContext:
        """TLS context for a management node: demands a client certificate
        issued by the lab CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.ca_path))
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx

    def peer_identity(self, der: bytes) -> Identity:
        """The identity of a peer whose certificate passed the TLS handshake;
        PkiError if it does not name a player (servers call this on every
        connection, so revocation checks belong here too)."""
        return identity_of(der)

    def client_context(self) -> ssl.SSLContext:
        """TLS context for calling a management node: presents this player's
        certificate and checks the server's against the lab CA and host name."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.ca_path))
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx


def check_player_name(name: str) -> str:
    """Player names become file names and certificate subjects: keep them plain."""
    if not _NAME_RE.match(name):
        raise PkiError(
            f"bad player name {name!r}: use 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with the given mode from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read certificate {path}: {exc}") from exc


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key")
    return key


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


class LabCA:
    """A certificate authority kept in one directory."""

    def __init__(self, directory: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def name(self) -> str:
        return _common_name(self.cert.subject)

    @classmethod
    def create(cls, directory: Path | str, name: str = "vnet lab CA") -> LabCA:
        """Create the CA in `directory`, or load the one already there.

        Loading an existing CA of another name is an error rather than a silent
        surprise: every certificate issued so far hangs on that CA.
        """
        directory = Path(directory)
        if (directory / "ca.pem").exists():
            ca = cls.load(directory)
            if ca.name != name:
                raise PkiError(f"{directory} already holds CA {ca.name!r}, not {name!r}")
            return ca
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    key_cert_sign=True, crl_sign=True, encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(directory / "ca.key", _key_pem(key), 0o600)
        _write_private(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM),
                       0o644)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path | str) -> LabCA:
        directory = Path(directory)
        if not (directory / "ca.pem").exists():
            raise PkiError(f"no CA in {directory}: create one with LabCA.create")
        cert = _load_cert(directory / "ca.pem")
        key = _load_key(directory / "ca.key")
        if not _same_public_key(cert, key):
            raise PkiError(f"{directory}: ca.key does not match ca.pem")
        return cls(directory, cert, key)

    def credentials_paths(self, player_name: str) -> Credentials:
        check_player_name(player_name)
        players = self.directory / "players"
        return Credentials(players / f"{player_name}.pem", players / f"{player_name}.key",
                           self.cert_path)

    def issue(self, player_name: str, role: Role | str, *,
              days: int = PLAYER_DAYS) -> Credentials:
        """Credentials for `player_name` in `role`, reusing valid existing ones.

        A name belongs to one role: asking for another role for a name that
        already has a valid certificate is refused, since peers authorize by
        name and a silent change would hand one player's rights to another.
        """
        role = Role(role)
        creds = self.credentials_paths(player_name)
        existing = self._reusable(creds)
        if existing is not None:
            if existing.role is not role:
                raise PkiError(
                    f"player {player_name!r} already has a {existing.role.value} certificate "
                    f"({creds.cert_path}); remove it to re-issue as {role.value}"
                )
            return creds
        creds.cert_path.parent.mkdir(mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(player_name, role, key.public_key(), days)
        _write_private(creds.key_path, _key_pem(key), 0o600)
        _write_private(creds.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return creds

    def _reusable(self, creds: Credentials) -> Identity | None:
        """The identity in an existing pair if it is whole, ours and not about to end."""
        if not (creds.cert_path.exists() and creds.key_path.exists()):
            return None
        try:
            cert = _load_cert(creds.cert_path)
            key = _load_key(creds.key_path)
            cert.verify_directly_issued_by(self.cert)
            identity = identity_of(cert)
        except (PkiError, ValueError, TypeError, InvalidSignature):
            return None
        if not _same_public_key(cert, key):
            return None
        if cert.not_valid_after_utc - RENEW_BEFORE < _now():
            return None
        if os.stat(creds.key_path).st_mode & 0o077:
            os.chmod(creds.key_path, 0o600)
        return identity

    def _sign(self, player_name: str, role: Role, public_key: ec.EllipticCurvePublicKey,
              days: int) -> x509.Certificate:
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, player_name),
        ])
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role.value),
            x509.UniformResourceIdentifier(PLAYER_URI_PREFIX + player_name),
        ]
        for host in SERVER_HOSTS:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=True,
                    key_cert_sign=False, crl_sign=False, encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                       ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise PkiError(f"certificate subject {name.rfc4514_string()!r} needs exactly one CN")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of(peer_cert: x509.Certificate | bytes) -> Identity:
    """The player a certificate names: CN for the name, SAN URI for the role.

    `peer_cert` is a parsed certificate or its DER bytes, as
    ``ssl.SSLSocket.getpeercert(binary_form=True)`` returns them. This does
    not verify the certificate: the TLS handshake already did.
    """
    cert = x509.load_der_x509_certificate(peer_cert) if isinstance(peer_cert, bytes) \
        else peer_cert
    name = check_player_name(_common_name(cert.subject))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PkiError(f"certificate of {name!r} has no subjectAltName") from exc
    roles = [uri.removeprefix(ROLE_URI_PREFIX)
             for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
             if uri.startswith(ROLE_URI_PREFIX)]
    if len(roles) != 1:
        raise PkiError(f"certificate of {name!r} needs exactly one {ROLE_URI_PREFIX}* URI")
    try:
        role = Role(roles[0])
    except ValueError as exc:
        raise PkiError(f"certificate of {name!r} has unknown role {roles[0]!r}") from exc
    return Identity(name, role)
