"""Who a peer's certificate names, parsed once per certificate.

Every request checks its peer (the server on each call, the client on each
kept-alive reuse), and parsing a DER certificate with `cryptography` costs
more than the rest of a small call's checks. The parse depends only on the
bytes, so it is kept (a bounded map); the revocation check is made on every
call, against the CRL as it is now (re-read only when its file changed)."""

from __future__ import annotations

import threading

from cryptography import x509

from vnetlib.players.pki import Credentials, Identity, PkiError, identity_of
from vnetlib.players.revocation import CrlError, revoked_serials

CACHED_CERTS = 512

_parsed: dict[bytes, tuple[Identity, int]] = {}
_lock = threading.Lock()


def named(der: bytes) -> tuple[Identity, int]:
    """(the player `der` names, its serial); PkiError if it names none."""
    with _lock:
        hit = _parsed.get(der)
    if hit is not None:
        return hit
    cert = x509.load_der_x509_certificate(der)
    found = (identity_of(cert), cert.serial_number)
    with _lock:
        if len(_parsed) >= CACHED_CERTS:
            _parsed.pop(next(iter(_parsed)))
        _parsed[der] = found
    return found


def peer_identity(credentials: Credentials, der: bytes) -> Identity:
    """`Credentials.peer_identity` without parsing a known certificate again:
    PkiError if `der` names no player or the current CRL revokes it."""
    identity, serial = named(der)
    try:
        revoked = revoked_serials(credentials.crl, credentials.ca_path)
    except CrlError as exc:
        raise PkiError(str(exc)) from exc
    if serial in revoked:
        raise PkiError(f"certificate of {identity} (serial {serial:x}) is revoked")
    return identity
