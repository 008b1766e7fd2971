"""The VNO's end users and its RADIUS server (Interface 6, the VNO's side).

The store is one JSON file (mode 0600) in the VNO's AAA directory, which the
server's rlm_perl module reads on every Access-Request: a change is in force
when it returns, without reloading the server (FreeRADIUS's HUP does not
reliably reload rlm_files, and ignores HUPs less than 5 s apart).

Each user is bound to one attachment point of one of the VNO's VNets; the
accept names it by a handle, `<VNP order>/<node>`, which tells the PIP only
the name under which it already hosts that part of the VNet and the node.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vnetlib.aaa import daemons, logs, radius

REALM = r"[a-z][a-z0-9\-]{0,31}(?:\.[a-z][a-z0-9\-]{0,31}){0,3}"
IDENTITY_RE = re.compile(rf"^[a-z0-9][a-z0-9._\-]{{0,63}}@({REALM})$")
PASSWORD_RE = re.compile(r'^[\x21-\x7e]{1,128}$')
SERVER_CONF = "vno-radius"
USERS_JSON = "users.json"


class UserError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EndUser:
    identity: str
    vnet: str
    node: str
    handle: str
    pool: str
    session_timeout: int | None = None

    def public(self) -> dict[str, object]:
        return asdict(self)


def check_identity(identity: str, realm: str) -> str:
    match = IDENTITY_RE.match(identity)
    if match is None:
        raise UserError(f"identity {identity!r} is not user@realm (lower case, digits, . _ -)")
    if match.group(1) != realm:
        raise UserError(f"identity {identity!r} is not of this VNO's realm {realm!r}")
    return identity


def check_password(password: str) -> str:
    if not PASSWORD_RE.match(password) or any(c in password for c in '"\\'):
        raise UserError("a password is 1 to 128 printable ASCII characters, no blanks, "
                        "quotes or backslashes")
    return password


class UserStore:
    """The end users of one realm, the file its RADIUS server reads per request."""

    def __init__(self, directory: Path, realm: str) -> None:
        self.directory = directory
        self.realm = realm
        self._lock = threading.Lock()
        daemons.private_dir(directory)

    @property
    def path(self) -> Path:
        return self.directory / USERS_JSON

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def _save(self, data: dict[str, dict[str, object]]) -> None:
        daemons.write_private(self.path, json.dumps(data, indent=1, sort_keys=True))

    def all(self) -> list[EndUser]:
        with self._lock:
            data = self._load()
        return [_user(i, d) for i, d in sorted(data.items())]

    def get(self, identity: str) -> EndUser | None:
        with self._lock:
            found = self._load().get(identity)
        return None if found is None else _user(identity, found)

    def add(self, user: EndUser, password: str) -> EndUser:
        self.add_many([(user, password)])
        return user

    def add_many(self, users: list[tuple[EndUser, str]]) -> None:
        """Add users at once (one write of the store); none if one is invalid."""
        for user, password in users:
            check_identity(user.identity, self.realm)
            check_password(password)
            if user.session_timeout is not None and not 1 <= user.session_timeout <= 86400:
                raise UserError("the session timeout is 1 to 86400 seconds")
        with self._lock:
            data = self._load()
            for user, password in users:
                if user.identity in data:
                    raise UserError(f"user {user.identity} exists")
                data[user.identity] = {**asdict(user), "password": password}
                del data[user.identity]["identity"]
            self._save(data)

    def passwd(self, identity: str, password: str) -> None:
        check_password(password)
        with self._lock:
            data = self._load()
            if identity not in data:
                raise LookupError(f"no user {identity}")
            data[identity]["password"] = password
            self._save(data)

    def remove(self, identity: str) -> bool:
        with self._lock:
            data = self._load()
            if data.pop(identity, None) is None:
                return False
            self._save(data)
        return True

    def remove_vnet(self, vnet: str) -> list[str]:
        """Forget the users of a VNet that is gone."""
        with self._lock:
            data = self._load()
            gone = [i for i, d in data.items() if d.get("vnet") == vnet]
            for identity in gone:
                del data[identity]
            if gone:
                self._save(data)
        return gone


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


def _user(identity: str, d: dict[str, object]) -> EndUser:
    return EndUser(identity, str(d["vnet"]), str(d["node"]), str(d["handle"]), str(d["pool"]),
                   _int_or_none(d.get("session_timeout")))


# -- the server process -----------------------------------------------------------------


def _pidfile(directory: Path) -> Path:
    return directory / "run" / "server.pid"


def free_port(address: str = "0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def server_port(directory: Path) -> int | None:
    try:
        return int((directory / "port").read_text())
    except (OSError, ValueError):
        return None


def start_server(directory: Path, tls: radius.Tls, addresses: tuple[str, ...], *,
                 session_timeout: int = 3600,
                 methods: tuple[str, ...] = radius.DEFAULT_METHODS) -> int:
    """Start the VNO's RADIUS server (RadSec on a free TCP port, kept across
    restarts, on the management `addresses` only) unless it runs; returns its
    port."""
    if not addresses:
        raise ValueError("the RADIUS server needs an address to listen on")
    daemons.private_dir(directory)
    port = server_port(directory) or free_port(addresses[0])
    (directory / "port").write_text(f"{port}\n")
    cfg = radius.ServerConfig(directory, addresses, port, tls, session_timeout, methods)
    radius.write(directory, radius.server_conf(cfg), SERVER_CONF, tls)
    daemons.private_dir(directory / radius.CLASSES_DIR)
    daemons.write_private(directory / "users.pl",
                          radius.users_pl(directory / USERS_JSON, tls.crl))
    if not (directory / USERS_JSON).exists():
        fd = os.open(directory / USERS_JSON, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("{}")
    daemons.start(["freeradius", "-f", "-d", str(directory), "-n", SERVER_CONF,
                   "-l", str(directory / "log" / "radius.log")],
                  pidfile=_pidfile(directory), log=directory / "log" / "server.out",
                  marker=str(directory), settle=0.0)
    _wait_listening(addresses[0], port, directory)
    return port


def _wait_listening(address: str, port: int, directory: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemons.running(_pidfile(directory), str(directory)) is None:
            out = (directory / "log" / "server.out").read_text(errors="replace")[-1500:]
            raise daemons.DaemonError(f"the RADIUS server in {directory} exited:\n{out}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise daemons.DaemonError(f"the RADIUS server in {directory} does not listen on {port}")


def stop_server(directory: Path) -> bool:
    return daemons.stop(_pidfile(directory), str(directory))


ACCT_KEYS = ("status", "identity", "port", "device", "session", "seconds", "time", "pip")


@dataclass(slots=True)
class _AcctIndex:
    """The records parsed so far from one accounting log, and where parsing
    stopped: each request reads only what the server appended since."""

    inode: int = -1
    offset: int = 0
    rotated: int = -1  # the inode of the log's rotated copy when last read
    records: list[dict[str, str]] = field(default_factory=list)


_acct_indexes: dict[Path, _AcctIndex] = {}
_acct_lock = threading.Lock()


def _records(data: bytes) -> list[dict[str, str]]:
    return [dict(zip(ACCT_KEYS, line.split(maxsplit=len(ACCT_KEYS) - 1), strict=False))
            for line in data.decode(errors="replace").splitlines() if line]


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


def accounting(directory: Path) -> list[dict[str, str]]:
    """The accounting records the server received, oldest first (the
    rotated copy's, `vnetlib.aaa.logs`, then the log's)."""
    path = directory / radius.ACCOUNTING_LOG
    old = logs.rotated(path)
    with _acct_lock:
        index = _acct_indexes.setdefault(path, _AcctIndex())
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                rotated = _inode(old)
                if (st.st_ino != index.inode or st.st_size < index.offset
                        or rotated != index.rotated):  # new, replaced or rotated
                    index.inode, index.offset, index.rotated = st.st_ino, 0, rotated
                    index.records = _records(old.read_bytes()) if rotated >= 0 else []
                f.seek(index.offset)
                data = f.read()
        except FileNotFoundError:
            _acct_indexes.pop(path, None)
            return []
        complete = data[:data.rfind(b"\n") + 1]
        index.offset += len(complete)
        index.records += _records(complete)
        return list(index.records)
