"""The VNO's SSH front door to consoles: `ssh -p PORT VNET.NODE[.KIND]@HOST`.

A client of the VNO's own console setup: once a registered key identified
the SP (the keys of `vnetlib.players.sshkeys`), the session is set up exactly
as that SP's `POST /v1/vnets/{id}/console` would (the same route, dispatched
in-process with the SP's identity, so ownership, status and the chain below
are the same), and the minted token is consumed here in place of the VNO's
TLS listener: this front door opens the next hop (the VNP) and relays the
SSH channel's bytes both ways. The VNO's `console_sessions` table records the
session with the SSH peer and the key's fingerprint.

Only public keys authenticate (no passwords, no keyboard-interactive), only a
shell request opens a console (exec and subsystems are refused with a
message: the command would run nowhere else than in the console, so it is
not guessed at), no forwarding of any kind; logins must finish within
`login_timeout`, connections and sessions are bounded, idle sessions end.
A requested pty is honoured by passing bytes through untouched (the node's
shell has its own terminal at the PIP); window size changes are not carried
by the chain and are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from lxml import etree

from vnetlib.console.loop import LoopThread
from vnetlib.console.sessions import Pending, SessionTable, TokenRefused, setup_in_process
from vnetlib.console.wire import ByteReader, ByteWriter, HopError, close_quietly
from vnetlib.players import messages as m
from vnetlib.players.pki import Identity, Role
from vnetlib.players.server import Service
from vnetlib.players.sshkeys import KeyStore

if TYPE_CHECKING:
    from vnetlib.console.broker import ConsoleHub
    from vnetlib.players.config import PlayerConfig
    from vnetlib.players.vno import VnoService

log = logging.getLogger(__name__)

KINDS = ("shell", "serial")
CHUNK = 16 << 10
LINGER = 2.0  # seconds of output silence after the client's end of input
HOST_KEY_FILE = "ssh_host_ed25519_key"
STOP_NOTICE = b"\r\n[vnet ssh: the VNO is stopping]\r\n"
IDLE_NOTICE = b"\r\n[vnet ssh: idle for too long, session closed]\r\n"


@dataclass(frozen=True, slots=True)
class SshLimits:
    login_timeout: float = 30.0  # from the TCP connection to a finished login
    max_connections: int = 64
    max_sessions: int = 32  # consoles open at once
    idle_timeout: float = 1800.0
    open_timeout: float = 20.0  # the chain to answer


@dataclass(frozen=True, slots=True)
class Target:
    vnet: str
    node: str
    kind: str


def target_of(user: str) -> Target:
    """`VNET.NODE` or `VNET.NODE.KIND`; ValueError otherwise."""
    parts = user.split(".")
    kind = "shell"
    if len(parts) >= 3 and parts[-1] in KINDS:
        kind = parts.pop()
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"log in as VNET.NODE or VNET.NODE.KIND ({'|'.join(KINDS)}), "
                         f"not {user!r}")
    return Target(parts[0], ".".join(parts[1:]), kind)


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The host key at `path`, made (ed25519, mode 0600) if there is none yet."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    os.replace(tmp, path)
    return key


def state_dir(store_url: str, name: str) -> Path:
    """Where a player keeps files: beside its SQLite store, else under VNET_HOME."""
    if store_url.startswith("sqlite:///"):
        return Path(store_url[len("sqlite:///"):]).parent
    from vnetlib import paths
    return paths.ensure_home() / "players" / name


def _error_message(body: bytes) -> str:
    with contextlib.suppress(Exception):
        doc = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
        text = doc.findtext(f"{{{m.NS}}}message")
        if text:
            return text
    return "refused"


class _Server(asyncssh.SSHServer):
    """One connection: which SP its key belongs to."""

    def __init__(self, door: SshFrontDoor) -> None:
        self.door = door
        self.sp: str | None = None
        self.fingerprint = ""
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.door._conns.add(conn)
        if len(self.door._conns) > self.door.limits.max_connections:
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.door._conns.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Runs on the loop; a keyed look-up in the store is a fraction of a ms.
        fingerprint = key.get_fingerprint("sha256")
        owner = self.door.keys.owner_of(fingerprint)
        if owner is None:
            return False
        self.sp, self.fingerprint = owner, fingerprint
        return True

    def connection_requested(self, *args: Any) -> bool:
        return False

    def server_requested(self, *args: Any) -> bool:
        return False

    def unix_connection_requested(self, *args: Any) -> bool:
        return False

    def unix_server_requested(self, *args: Any) -> bool:
        return False


class SshFrontDoor(LoopThread):
    """Listens at (host, port) (bound at start); start()/stop()."""

    _thread_name = "vno-ssh"

    def __init__(self, service: Service, sessions: SessionTable, keys: KeyStore, listen: str,
                 host_key: Path, limits: SshLimits = SshLimits()) -> None:
        """`service` routes the console setup (the VNO's), `sessions` is the
        table of the VNO's console hub, where the setup mints its tokens."""
        self.service = service
        self.sessions = sessions
        self.keys = keys
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port or 0)
        self.host_key = load_host_key(host_key)
        self.limits = limits
        super().__init__()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0

    @property
    def public_key(self) -> str:
        """The host key as an OpenSSH public key line (for known_hosts)."""
        return self.host_key.export_public_key("openssh").decode().strip()

    def known_hosts_line(self) -> str:
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{host} {self.public_key}"

    def start(self) -> SshFrontDoor:
        self._start_loop()
        return self

    async def _listen(self) -> None:
        self._acceptor = await asyncssh.create_server(
            lambda: _Server(self), self.host, self.port,
            server_host_keys=[self.host_key], process_factory=self._session,
            encoding=None, line_editor=False, allow_pty=True, agent_forwarding=False,
            x11_forwarding=False, allow_scp=False, sftp_factory=None,
            login_timeout=self.limits.login_timeout, keepalive_interval=60,
            keepalive_count_max=3, password_auth=False, kbdint_auth=False,
            host_based_auth=False, gss_auth=False, gss_kex=False)
        self.port = self._acceptor.get_port()

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        for conn in list(self._conns):
            conn.close()
        if self._acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)

    def active(self) -> tuple[int, int]:
        """(connections, consoles) open now, for tests."""
        return len(self._conns), self._busy

    # -- one session channel -------------------------------------------------------

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            status = await self._console(process)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                process.stdout.write(STOP_NOTICE)
            status = 255
        finally:
            self._tasks.discard(task)
        with contextlib.suppress(Exception):
            process.exit(status)

    async def _console(self, process: asyncssh.SSHServerProcess[bytes]) -> int:
        server = process.get_extra_info("connection").get_owner()
        assert isinstance(server, _Server) and server.sp is not None
        user = process.get_extra_info("username") or ""
        peer = process.get_extra_info("peername")
        if process.command is not None or process.subsystem is not None:
            what = "a subsystem" if process.subsystem is not None else "a command"
            self._refuse(process, f"{what} is not offered here: this is a console; "
                                  "connect without one (use ssh -tt for a terminal)")
            return 2
        try:
            target = target_of(user)
        except ValueError as exc:
            self._refuse(process, str(exc))
            return 2
        if self._busy >= self.limits.max_sessions:
            self._refuse(process, "too many console sessions; try later")
            return 1
        self._busy += 1
        try:
            return await self._relay_session(process, server, target, peer)
        finally:
            self._busy -= 1

    @staticmethod
    def _refuse(process: asyncssh.SSHServerProcess[bytes], why: str) -> None:
        process.stderr.write(f"vnet ssh: {why}\r\n".encode())

    async def _relay_session(self, process: asyncssh.SSHServerProcess[bytes],
                             server: _Server, target: Target, peer: Any) -> int:
        sp = Identity(server.sp or "", Role.SP)
        body = m.console_request_xml(m.ConsoleRequest(target.node, target.kind))  # type: ignore[arg-type]
        outcome = await asyncio.to_thread(
            setup_in_process, self.service.dispatch, "POST",
            f"/v1/vnets/{target.vnet}/console", sp, body)
        if outcome.status != 200:
            self._refuse(process, _error_message(outcome.body))
            return 1
        session = m.console_session_from(m.parse_reply(outcome.body, "console-session"))
        who = f"ssh {peer[0] if peer else '?'} key {server.fingerprint}"
        try:
            pending: Pending = await asyncio.to_thread(
                self.sessions.consume, session.token, sp, who)
        except TokenRefused as exc:
            self._refuse(process, str(exc))
            return 1
        result = "refused"
        try:
            try:
                chain = await asyncio.wait_for(pending.open(), self.limits.open_timeout)
            except (TimeoutError, HopError) as exc:
                result = f"next hop failed: {exc or 'timeout'}"
                self._refuse(process, str(exc) or "the next hop did not answer")
                return 1
            log.info("ssh: console of %s on %s/%s (%s) from %s opened", sp, pending.vnet,
                     pending.node, pending.kind, who)
            try:
                result = await self._relay(process, *chain)
            finally:
                await close_quietly(chain[1])
            return 0
        except asyncio.CancelledError:
            result = "stopped"
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.sessions.finish, pending.hash, result)
            log.info("ssh: console on %s/%s closed: %s", pending.vnet, pending.node, result)

    async def _relay(self, process: asyncssh.SSHServerProcess[bytes],
                     reader: ByteReader, writer: ByteWriter) -> str:
        last = time.monotonic()
        stdin_done = False

        async def up() -> None:
            nonlocal last, stdin_done
            while data := await process.stdin.read(CHUNK):
                last = time.monotonic()
                writer.write(data)
                await writer.drain()
            stdin_done = True
            last = time.monotonic()

        async def down() -> None:
            nonlocal last
            while data := await reader.read(CHUNK):
                last = time.monotonic()
                process.stdout.write(data)
                await process.stdout.drain()

        up_task, down_task = asyncio.create_task(up()), asyncio.create_task(down())
        tasks = (up_task, down_task)
        try:
            while True:
                limit = LINGER if stdin_done else self.limits.idle_timeout
                left = limit - (time.monotonic() - last)
                waiting = {down_task} if up_task.done() else {up_task, down_task}
                done, _ = await asyncio.wait(waiting, timeout=max(left, 0.01),
                                             return_when=asyncio.FIRST_COMPLETED)
                if down_task in done:
                    exc = down_task.exception()
                    return "closed by the node side" + (f" ({exc})" if exc else "")
                if up_task in done:
                    exc = up_task.exception()
                    if exc is not None:
                        return f"closed by the client ({exc})"
                    continue  # the client's input ended: wait for the output to settle
                if time.monotonic() - last >= limit:
                    if stdin_done:
                        return "input ended"
                    with contextlib.suppress(Exception):
                        process.stdout.write(IDLE_NOTICE)
                    return "idle timeout"
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def front_door(service: VnoService, hub: ConsoleHub, config: PlayerConfig,
               limits: SshLimits = SshLimits()) -> SshFrontDoor:
    """The VNO's SSH front door from its configuration ([vno] ssh_listen); the
    host key lives in the VNO's state directory (made at the first start)."""
    key = state_dir(config.store, config.name) / f"{config.name}-{HOST_KEY_FILE}"
    return SshFrontDoor(service, hub.sessions, service.keys, config.vno.ssh_listen, key,
                        limits)
