"""Revocation as a running player sees it: the CA's CRL file, read again when
it changes, both for the TLS handshake and for the identity check that
servers make on every request.

Two mechanisms, so that a revocation reaches processes that are already
running without restarting them:

- `WatchedContext`, an ``ssl.SSLContext`` that, before each new connection
  (``wrap_socket``, and ``wrap_bio`` for asyncio), loads the CRL file into its
  certificate store again if the file changed since the last look. OpenSSL
  keeps every CRL it was given and checks a peer against the one of the
  issuer with the latest lastUpdate, which `LabCA` makes strictly increasing.
  A server context also reloads its own certificate and key when both files
  changed and match, so a renewed certificate is served without a restart.
- `revoked_serials`, the serials a CRL file lists, verified against the CA
  certificate and cached per file until its inode, size or mtime changes.

A missing, unreadable, foreign or expired CRL is an error, never "nothing is
revoked": a player that cannot read its CRL refuses peers instead of trusting
all of them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]


class CrlError(Exception):
    """The CRL cannot be used; the message names the file."""


def stamp(path: Path) -> Stamp | None:
    """What changes when a file is replaced or rewritten: inode, size, mtime."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _Cached:
    crl_stamp: Stamp
    ca_stamp: Stamp
    serials: frozenset[int]
    next_update: dt.datetime


_cache: dict[Path, _Cached] = {}
_cache_lock = threading.Lock()


def read_crl(crl_path: Path, ca_path: Path) -> tuple[frozenset[int], dt.datetime]:
    """The serials that the CRL at `crl_path` lists and its nextUpdate, after
    checking that the CA at `ca_path` signed it."""
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CrlError(f"cannot read CRL {crl_path}: {exc}") from exc
    try:
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CrlError(f"cannot read CA certificate {ca_path}: {exc}") from exc
    public_key = ca.public_key()
    if crl.issuer != ca.subject or not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
        raise CrlError(f"CRL {crl_path} is not signed by the CA in {ca_path}")
    next_update = crl.next_update_utc
    if next_update is None:
        raise CrlError(f"CRL {crl_path} has no nextUpdate")
    return frozenset(entry.serial_number for entry in crl), next_update


def revoked_serials(crl_path: Path, ca_path: Path) -> frozenset[int]:
    """The revoked serials, read again only when the CRL or CA file changed.

    CrlError if the CRL is missing, not the CA's, or past its nextUpdate.
    """
    crl_stamp, ca_stamp = stamp(crl_path), stamp(ca_path)
    if crl_stamp is None:
        raise CrlError(f"no CRL at {crl_path}: the lab CA publishes it with the credentials")
    if ca_stamp is None:
        raise CrlError(f"no CA certificate at {ca_path}")
    with _cache_lock:
        cached = _cache.get(crl_path)
        if cached is None or (cached.crl_stamp, cached.ca_stamp) != (crl_stamp, ca_stamp):
            serials, next_update = read_crl(crl_path, ca_path)
            cached = _Cached(crl_stamp, ca_stamp, serials, next_update)
            _cache[crl_path] = cached
    if cached.next_update < dt.datetime.now(dt.UTC):
        raise CrlError(f"CRL {crl_path} expired at {cached.next_update:%Y-%m-%d %H:%M}Z: "
                       "the lab CA publishes a new one on `vnet lab up`")
    return cached.serials


def _pair_matches(cert_path: Path, key_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt))


class WatchedContext(ssl.SSLContext):
    """An SSLContext that loads a changed CRL (and, for servers, a changed
    certificate) before each new connection. Set up with `watch`."""

    _crl_path: Path
    _cert_path: Path | None
    _key_path: Path
    _stamps: dict[str, Stamp | None]
    _watch_lock: threading.Lock

    def watch(self, crl_path: Path, cert_path: Path | None = None,
              key_path: Path | None = None) -> None:
        """Load `crl_path` now and whenever it changes; also the certificate
        chain when `cert_path` and `key_path` are given."""
        self._crl_path = crl_path
        self._cert_path = cert_path
        self._key_path = key_path or Path()
        self._watch_lock = threading.Lock()
        crl = stamp(crl_path)
        if crl is None:
            raise CrlError(f"no CRL at {crl_path}: the lab CA publishes it with the credentials")
        self.load_verify_locations(cafile=str(crl_path))
        self._stamps = {"crl": crl}
        if cert_path is not None:
            self._stamps["cert"] = stamp(cert_path)
            self._stamps["key"] = stamp(self._key_path)

    def refresh(self) -> None:
        """Load what changed since the last look; a file caught half-written
        is left for the next connection."""
        with self._watch_lock:
            crl = stamp(self._crl_path)
            if crl is not None and crl != self._stamps["crl"]:
                try:
                    self.load_verify_locations(cafile=str(self._crl_path))
                    self._stamps["crl"] = crl
                    log.info("reloaded CRL %s", self._crl_path)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("cannot reload CRL %s: %s", self._crl_path, exc)
            if self._cert_path is None:
                return
            cert, key = stamp(self._cert_path), stamp(self._key_path)
            if (cert, key) == (self._stamps["cert"], self._stamps["key"]):
                return
            if _pair_matches(self._cert_path, self._key_path):
                try:
                    self.load_cert_chain(str(self._cert_path), str(self._key_path))
                    self._stamps["cert"], self._stamps["key"] = cert, key
                    log.info("reloaded certificate %s", self._cert_path)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("cannot reload %s: %s", self._cert_path, exc)

    def wrap_socket(
        self, sock: socket.socket, server_side: bool = False,
        do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        self.refresh()
        return super().wrap_socket(sock, server_side, do_handshake_on_connect,
                                   suppress_ragged_eofs, server_hostname, session)

    def wrap_bio(
        self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
        server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        self.refresh()
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
