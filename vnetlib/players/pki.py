"""The lab's own certificate authority, and who a peer certificate says it is.

Every management node (PIP, VNP, VNO) and every SP client holds a certificate
issued by the lab CA. One certificate serves both ends of mutual TLS: it is
valid for 127.0.0.1 and localhost as a server (a player apart's also for
its own address, which `renew` keeps), and carries the player's name
(subject CN) and role (subject OU and a SAN URI ``urn:vnet:role:<role>``) so a
server can tell which player is calling. The role is read from the SAN URI,
which is the one place a name constraint-aware verifier would look; the OU is
there for humans reading ``openssl x509 -text``.

Layout of a CA directory (only the lab's operator reads it)::

    ca.pem, ca.key             the authority (key 0600)
    crl.pem                    the CRL: revoked serials, nextUpdate CRL_DAYS on
    index.json                 every certificate issued: serial, name, role,
                               end of validity, revocation, the addresses it
                               names besides loopback (players apart)
    players/<name>.pem, .key   the current pair of each player (key 0600)
    .lock                      flock(2)ed around every change

A player never sees that directory: `LabCA.export` gives it a directory of
its own with ``<name>.pem``, ``<name>.key``, ``ca.pem`` and ``crl.pem``, and
`check_player_dir` refuses one that holds any other private key.

Keys are EC P-256. Every file is written to a unique temporary name in its
directory and renamed, and every change of the CA's state happens under the
lock, so neither a crash nor issuing from several threads or processes at
once leaves a key beside a certificate that is not its own.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnetlib.players.revocation import CrlError, WatchedContext, revoked_serials

ROLE_URI_PREFIX = "urn:vnet:role:"
PLAYER_URI_PREFIX = "urn:vnet:player:"
ORGANIZATION = "vnet lab"
SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")

CA_DAYS = 3650
PLAYER_DAYS = 365
# A certificate closer than this to its end is re-issued rather than reused.
RENEW_BEFORE = dt.timedelta(days=7)
# A CRL's nextUpdate; a CRL with less than half of it left is published anew
# whenever the CA issues or hands out credentials.
CRL_DAYS = 30
# lastUpdate of a CRL lies this far back, then one second after the previous
# CRL's: OpenSSL holds every CRL it loaded and trusts the latest lastUpdate,
# so a running player must see each new CRL as strictly later.
CRL_BACKDATE = dt.timedelta(seconds=60)

CA_CERT, CA_KEY, CRL_FILE, INDEX_FILE, LOCK_FILE = (
    "ca.pem", "ca.key", "crl.pem", "index.json", ".lock")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PRIVATE_KEY_MARK = b"PRIVATE KEY-----"


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
    """Paths of a player's certificate, its key, the CA that vouches for peers
    and the CA's CRL (by default ``crl.pem`` beside the CA certificate)."""

    cert_path: Path
    key_path: Path
    ca_path: Path
    crl_path: Path | None = None

    @property
    def crl(self) -> Path:
        return self.crl_path if self.crl_path is not None else self.ca_path.with_name(CRL_FILE)

    def server_context(self) -> ssl.SSLContext:
        """TLS context for a management node: demands a client certificate
        issued by the lab CA and not revoked. The CRL is read again, and a
        renewed certificate of this player picked up, before each connection
        after the files changed."""
        ctx = WatchedContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        self._trust(ctx, watch_own=True)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """TLS context for calling a management node: presents this player's
        certificate and checks the server's against the lab CA, its CRL (read
        again when it changed) and the host name."""
        ctx = WatchedContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        self._trust(ctx, watch_own=False)
        return ctx

    def _trust(self, ctx: WatchedContext, *, watch_own: bool) -> None:
        ctx.load_verify_locations(cafile=str(self.ca_path))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        try:
            if watch_own:
                ctx.watch(self.crl, self.cert_path, self.key_path)
            else:
                ctx.watch(self.crl)
        except (CrlError, ssl.SSLError) as exc:
            raise PkiError(f"cannot load CRL {self.crl}: {exc}") from exc

    def peer_identity(self, der: bytes) -> Identity:
        """The identity of a peer whose certificate passed the TLS handshake;
        PkiError if it does not name a player or the CRL revokes it. Servers
        call this on every request: the CRL file is read again only when it
        changed, so a revocation reaches a running server at once."""
        cert = x509.load_der_x509_certificate(der)
        identity = identity_of(cert)
        try:
            revoked = revoked_serials(self.crl, self.ca_path)
        except CrlError as exc:
            raise PkiError(str(exc)) from exc
        if cert.serial_number in revoked:
            raise PkiError(f"certificate of {identity} (serial {cert.serial_number:x}) "
                           "is revoked")
        return identity


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """One line of the CA's index."""

    serial: int
    name: str
    role: Role
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    addresses: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"serial": f"{self.serial:x}", "name": self.name, "role": self.role.value,
                "not_after": self.not_after.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "reason": self.reason, "addresses": list(self.addresses)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IssuedCert:
        revoked = data.get("revoked_at")
        return cls(int(data["serial"], 16), str(data["name"]), Role(data["role"]),
                   dt.datetime.fromisoformat(data["not_after"]),
                   dt.datetime.fromisoformat(revoked) if revoked else None,
                   data.get("reason"), tuple(data.get("addresses") or ()))


@dataclass(frozen=True, slots=True)
class _Index:
    certs: tuple[IssuedCert, ...] = ()
    crl_number: int = 0
    crl_last_update: dt.datetime | None = None


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
    """Write atomically with the given mode from the first byte on, through a
    temporary file of a name no other writer uses."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _reason(reason: x509.ReasonFlags | str) -> x509.ReasonFlags:
    if isinstance(reason, x509.ReasonFlags):
        return reason
    for flag in x509.ReasonFlags:
        if reason in (flag.name, flag.value, flag.name.replace("_", "-")):
            return flag
    names = ", ".join(f.name for f in x509.ReasonFlags if f is not x509.ReasonFlags.remove_from_crl)
    raise PkiError(f"unknown revocation reason {reason!r}: one of {names}")


class LabCA:
    """A certificate authority kept in one directory."""

    def __init__(self, directory: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

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
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        with _flock(directory / LOCK_FILE):
            if (directory / CA_CERT).exists():
                ca = cls.load(directory)
                if ca.name != name:
                    raise PkiError(f"{directory} already holds CA {ca.name!r}, not {name!r}")
                ca._ensure_crl()
                return ca
            ca = cls._new(directory, name)
            ca._publish_crl(_Index())
            return ca

    @classmethod
    def _new(cls, directory: Path, name: str) -> LabCA:
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
        _write_private(directory / CA_KEY, _key_pem(key), 0o600)
        _write_private(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM),
                       0o644)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path | str) -> LabCA:
        directory = Path(directory)
        if not (directory / CA_CERT).exists():
            raise PkiError(f"no CA in {directory}: create one with LabCA.create")
        cert = _load_cert(directory / CA_CERT)
        key = _load_key(directory / CA_KEY)
        if not _same_public_key(cert, key):
            raise PkiError(f"{directory}: {CA_KEY} does not match {CA_CERT}")
        return cls(directory, cert, key)

    def credentials_paths(self, player_name: str) -> Credentials:
        check_player_name(player_name)
        players = self.directory / "players"
        return Credentials(players / f"{player_name}.pem", players / f"{player_name}.key",
                           self.cert_path, self.crl_path)

    @contextmanager
    def _locked(self) -> Iterator[_Index]:
        """Hold the CA's lock; yields the index as it is now."""
        with _flock(self.directory / LOCK_FILE):
            yield self._read_index()

    def issue(self, player_name: str, role: Role | str, *,
              days: int = PLAYER_DAYS) -> Credentials:
        """Credentials for `player_name` in `role`, reusing valid existing ones.

        A name belongs to one role: asking for another role for a name that
        already has a valid certificate is refused, since peers authorize by
        name and a silent change would hand one player's rights to another.
        A revoked certificate is never reused: the player gets a new pair.
        """
        with self._locked() as index:
            creds = self._issue(index, player_name, Role(role), days)
            self._ensure_crl()
            return creds

    def renew(self, player_name: str, *, days: int = PLAYER_DAYS) -> Credentials:
        """A new key and certificate for a player that has one: same name,
        role and addresses (a player apart is called at its own address, which
        its certificate names), new serial, a full `days` of validity. The old certificate stays
        valid until it ends (revoke it to end it sooner), so a running player
        keeps working until it loads the new pair."""
        with self._locked() as index:
            creds = self.credentials_paths(player_name)
            if not creds.cert_path.exists():
                raise PkiError(f"player {player_name!r} has no certificate to renew "
                               f"({creds.cert_path}); issue one first")
            current = _load_cert(creds.cert_path)
            role = identity_of(current).role
            self._new_pair(index, player_name, role, days, named_addresses(current))
            self._ensure_crl()
            return creds

    def revoke(self, who: str | int,
               reason: x509.ReasonFlags | str = x509.ReasonFlags.unspecified) -> list[int]:
        """Revoke a player's certificates (`who` a name) or one certificate
        (`who` a serial), publish the new CRL, return the serials revoked.

        The player's files stay where they are; `issue` and `export` give it
        a new pair the next time they are asked, `renew` does at once.
        """
        flag = _reason(reason)
        with self._locked() as index:
            index = self._with_current_pairs(index)
            if isinstance(who, int):
                hits = [c for c in index.certs if c.serial == who]
                if not hits:
                    raise PkiError(f"serial {who:x} was not issued by CA {self.name!r}")
                hits = [c for c in hits if c.revoked_at is None]
            else:
                check_player_name(who)
                hits = [c for c in index.certs if c.name == who and c.revoked_at is None
                        and c.not_after > _now()]
                if not hits:
                    raise PkiError(f"player {who!r} has no valid certificate of CA "
                                   f"{self.name!r} to revoke")
            now = _now()
            targets = {c.serial for c in hits}
            certs = tuple(replace(c, revoked_at=now, reason=flag.value)
                          if c.serial in targets else c for c in index.certs)
            self._publish_crl(replace(index, certs=certs))
            return sorted(targets)

    def certificates(self) -> list[IssuedCert]:
        """Every certificate in the index, oldest first."""
        with self._locked() as index:
            return list(index.certs)

    def export(self, player_name: str, role: Role | str, target: Path | str) -> Credentials:
        """Issue (or reuse) the player's credentials and copy them, with the
        CA certificate and CRL but never the CA key, to `target`, the one
        directory the player reads."""
        target = Path(target)
        check_player_name(player_name)
        if target.resolve() == self.directory.resolve():
            raise PkiError(f"{target} is the CA's own directory: export elsewhere")
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o700)
        with self._locked() as index:
            creds = self._issue(index, player_name, Role(role), PLAYER_DAYS)
            self._ensure_crl()
            given = Credentials(target / f"{player_name}.pem", target / f"{player_name}.key",
                                target / CA_CERT, target / CRL_FILE)
            for source, dest, mode in ((creds.key_path, given.key_path, 0o600),
                                       (creds.cert_path, given.cert_path, 0o644),
                                       (self.cert_path, given.ca_path, 0o644),
                                       (self.crl_path, given.crl, 0o644)):
                _write_private(dest, source.read_bytes(), mode)
        return given

    def copy_crl(self, target: Path) -> Path:
        """Put the current CRL into a player's directory, as `crl.pem`."""
        dest = target / CRL_FILE
        _write_private(dest, self.crl_path.read_bytes(), 0o644)
        return dest

    def publish_crl(self) -> Path:
        """Write a new CRL now (it is written on every change anyway)."""
        with self._locked() as index:
            self._publish_crl(index)
        return self.crl_path

    def _issue(self, index: _Index, player_name: str, role: Role, days: int) -> Credentials:
        creds = self.credentials_paths(player_name)
        revoked = {c.serial for c in index.certs if c.revoked_at is not None}
        existing = self._reusable(creds, revoked)
        if existing is not None:
            if existing.role is not role:
                raise PkiError(
                    f"player {player_name!r} already has a {existing.role.value} certificate "
                    f"({creds.cert_path}); remove it to re-issue as {role.value}"
                )
            return creds
        return self._new_pair(index, player_name, role, days)

    def _new_pair(self, index: _Index, player_name: str, role: Role,
                  days: int, addresses: Sequence[str] = ()) -> Credentials:
        """Sign a new pair, record it in the index, then write key and
        certificate (the lock keeps readers of the pair out meanwhile)."""
        creds = self.credentials_paths(player_name)
        creds.cert_path.parent.mkdir(mode=0o700, exist_ok=True)
        taken = {c.serial for c in index.certs}
        serial = x509.random_serial_number()
        while serial in taken:
            serial = x509.random_serial_number()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(player_name, role, key.public_key(), days, serial, addresses)
        entry = IssuedCert(serial, player_name, role, cert.not_valid_after_utc,
                           addresses=named_addresses(cert))
        self._write_index(replace(index, certs=(*index.certs, entry)))
        _write_private(creds.key_path, _key_pem(key), 0o600)
        _write_private(creds.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return creds

    def _reusable(self, creds: Credentials, revoked: set[int]) -> Identity | None:
        """The identity in an existing pair if it is whole, ours, not revoked
        and not about to end."""
        if not (creds.cert_path.exists() and creds.key_path.exists()):
            return None
        try:
            cert = _load_cert(creds.cert_path)
            key = _load_key(creds.key_path)
            cert.verify_directly_issued_by(self.cert)
            identity = identity_of(cert)
        except (PkiError, ValueError, TypeError, InvalidSignature):
            return None
        if not _same_public_key(cert, key) or cert.serial_number in revoked:
            return None
        if cert.not_valid_after_utc - RENEW_BEFORE < _now():
            return None
        if os.stat(creds.key_path).st_mode & 0o077:
            os.chmod(creds.key_path, 0o600)
        return identity

    def _with_current_pairs(self, index: _Index) -> _Index:
        """The index plus the current certificates of players/ it lacks
        (issued before the CA kept an index)."""
        known = {c.serial for c in index.certs}
        extra: list[IssuedCert] = []
        for path in sorted((self.directory / "players").glob("*.pem")):
            try:
                cert = _load_cert(path)
                cert.verify_directly_issued_by(self.cert)
                who = identity_of(cert)
            except (PkiError, ValueError, TypeError, InvalidSignature):
                continue
            if cert.serial_number not in known:
                extra.append(IssuedCert(cert.serial_number, who.name, who.role,
                                        cert.not_valid_after_utc))
        return replace(index, certs=(*index.certs, *extra)) if extra else index

    def _read_index(self) -> _Index:
        path = self.directory / INDEX_FILE
        if not path.exists():
            return _Index()
        try:
            data = json.loads(path.read_text())
            last = data.get("crl_last_update")
            return _Index(tuple(IssuedCert.from_json(c) for c in data["certs"]),
                          int(data.get("crl_number", 0)),
                          dt.datetime.fromisoformat(last) if last else None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PkiError(f"cannot read the CA index {path}: {exc}") from exc

    def _write_index(self, index: _Index) -> None:
        data = {"crl_number": index.crl_number,
                "crl_last_update": (index.crl_last_update.isoformat()
                                    if index.crl_last_update else None),
                "certs": [c.to_json() for c in index.certs]}
        _write_private(self.directory / INDEX_FILE,
                       (json.dumps(data, indent=1) + "\n").encode(), 0o600)

    def _ensure_crl(self) -> None:
        """Publish a CRL if there is none or the current one is past half
        its life. Call with the lock held."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
            next_update = crl.next_update_utc
            if next_update is not None and \
                    next_update - _now() > dt.timedelta(days=CRL_DAYS) / 2:
                return
        except (OSError, ValueError):
            pass
        self._publish_crl(self._read_index())

    def _publish_crl(self, index: _Index) -> None:
        """Sign the CRL of `index`, write it and the index. Call with the
        lock held."""
        now = _now()
        last_update = now.replace(microsecond=0) - CRL_BACKDATE
        if index.crl_last_update is not None and last_update <= index.crl_last_update:
            last_update = index.crl_last_update + dt.timedelta(seconds=1)
        number = index.crl_number + 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last_update)
            .next_update(now + dt.timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for cert in index.certs:
            if cert.revoked_at is None or cert.not_after < now:
                continue
            entry = x509.RevokedCertificateBuilder().serial_number(cert.serial) \
                .revocation_date(cert.revoked_at)
            reason = _reason(cert.reason or "unspecified")
            if reason is not x509.ReasonFlags.unspecified:  # RFC 5280 5.3.1: omit it
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._key, hashes.SHA256())
        self._write_index(replace(index, crl_number=number, crl_last_update=last_update))
        _write_private(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)

    def _sign(self, player_name: str, role: Role, public_key: ec.EllipticCurvePublicKey,
              days: int, serial: int, addresses: Sequence[str] = ()) -> x509.Certificate:
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
        for address in dict.fromkeys(addresses):
            if address not in SERVER_HOSTS:
                names.append(x509.IPAddress(ipaddress.ip_address(address)))
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
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


def named_addresses(cert: x509.Certificate) -> tuple[str, ...]:
    """The IP addresses a certificate names besides the loopback ones every
    player certificate has (a player apart: its management address)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(a) for a in san.get_values_for_type(x509.IPAddress)
                 if str(a) not in SERVER_HOSTS)


def check_source(der: bytes, source: str) -> None:
    """PkiError unless the certificate `der` names `source`, the address a
    client called from, among its IP addresses (loopback ones included):
    with players apart every player's certificate names its own address, so
    a key copied to another machine is refused there. The message is the
    reason a server logs and answers."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        named = []
    try:
        here = ipaddress.ip_address(source)
    except ValueError:
        raise PkiError(f"cannot check the source address {source!r}") from None
    if isinstance(here, ipaddress.IPv6Address) and here.ipv4_mapped is not None:
        here = here.ipv4_mapped
    if str(here) not in named:
        who = identity_of(cert)
        raise PkiError(f"source address {here} is not one the certificate of {who} names "
                       f"({', '.join(named) or 'none'}): a key used from another address")


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


def identity_of_file(path: Path | str) -> Identity:
    """The player that the PEM certificate at `path` names."""
    return identity_of(_load_cert(Path(path)))


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive flock(2) on `path`: excludes other processes and, since
    each call opens the file anew, other threads of this one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def player_credentials(directory: Path | str, name: str, role: Role | str) -> Credentials:
    """The credentials in a player's own directory, as `LabCA.export` writes
    it: ``NAME.pem``, ``NAME.key``, ``ca.pem``, ``crl.pem``.

    Refuses, naming the file, a directory that holds any other private key,
    the CA's above all: a player that can read the CA key can issue itself
    any identity. Also refuses missing files, a key that does not match the
    certificate, and a certificate of another name or role.
    """
    directory = Path(directory)
    role = Role(role)
    check_player_name(name)
    creds = Credentials(directory / f"{name}.pem", directory / f"{name}.key",
                        directory / CA_CERT, directory / CRL_FILE)
    if (directory / CA_KEY).exists():
        raise PkiError(f"{directory / CA_KEY}: a player's credential directory must not "
                       "hold the CA key; give the player its own directory "
                       "(LabCA.export, as `vnet lab up` does)")
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        if path != creds.key_path and path.is_file() and _holds_private_key(path):
            raise PkiError(f"{path} holds a private key: a player's credential directory "
                           f"holds only its own key, {creds.key_path.name}")
    missing = [p.name for p in (creds.cert_path, creds.key_path, creds.ca_path, creds.crl)
               if not p.is_file()]
    if missing:
        raise PkiError(f"{directory}: missing {', '.join(missing)} for player {name!r} "
                       "(LabCA.export writes them, as `vnet lab up` does)")
    cert, key, ca = (_load_cert(creds.cert_path), _load_key(creds.key_path),
                     _load_cert(creds.ca_path))
    if _same_public_key(ca, key):
        raise PkiError(f"{creds.key_path} is the CA key: a player holds only its own key")
    if not _same_public_key(cert, key):
        raise PkiError(f"{creds.key_path} does not match {creds.cert_path}")
    who = identity_of(cert)
    if who != Identity(name, role):
        raise PkiError(f"{creds.cert_path} names {who}, not {Identity(name, role)}")
    return creds


def _holds_private_key(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return _PRIVATE_KEY_MARK in f.read(1 << 20)
    except OSError:
        return False
