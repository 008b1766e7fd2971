"""The console routes of each player (Interface 5, setup over HTTPS) and the
hub that holds its mapping table and listener.

Each player answers a console request with its own listener's URL and a
token it minted; it keeps (its token -> the next hop's URL and token) in
memory and records the session in `console_sessions`. So the VNO learns the
VNP's listener only, the VNP its provider's, and the PIP its customer VNP.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from sqlalchemy import Connection, Engine, event

from vnetlib.console import compact, repoint
from vnetlib.console.endpoints import ConsoleEndpoint, NetnsShell, VmSerial, VmVnc
from vnetlib.console.relay import DEFAULT_LIMITS, ConsoleLimits, ConsoleServer
from vnetlib.console.repoint import Repointable
from vnetlib.console.sessions import (
    Opener,
    Pending,
    SessionTable,
    in_process_setup,
    token_hash,
)
from vnetlib.console.wire import (
    ByteReader,
    ByteWriter,
    HopError,
    HopRefused,
    NotOffered,
    SetupRefused,
)
from vnetlib.core.pip import spec_of
from vnetlib.core.records import Sliver, State
from vnetlib.players import messages as m
from vnetlib.players.client import (
    AsyncCalls,
    ClientError,
    PlayerClient,
    Relayed,
    RemoteError,
    Reply,
)
from vnetlib.players.config import PlayerConfig, Upstream
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.server import Conflict, NotFound, UpstreamFailed, require_role
from vnetlib.players.stores import PlayerStore, Record

if TYPE_CHECKING:
    from vnetlib.players.pip import PipService
    from vnetlib.players.vno import VnoService
    from vnetlib.players.vnp import VnpService

log = logging.getLogger(__name__)

CONSOLE_CALL = 30.0
RECORD_TTL = 5.0
RELOCATE_POLL = 0.2  # seconds between looks at a sliver whose node is being moved
"""Seconds a record read for a console setup is reused (unless written before)."""
MAX_RECORDS = 1024
T = TypeVar("T")
FOLLOW_KINDS = {"shell": "shell", "serial": "serial console"}
"""Kinds whose sessions at a VNP follow their node to another provider (with
this word in the notice). Not VNC: a new display's RFB greeting in the
middle of a session would break the client's protocol; it ends instead."""
PREPARED_KINDS = frozenset({"shell"})
"""Kinds whose next hop is opened as soon as the token is minted. Not a VM's
serial line (opening it takes the domain's serial lock, which an unused
token must not hold) nor its VNC display (its server speaks first)."""


class RecordCache:
    """The records a player's console setups read (the VNO's VNets, the VNP's
    orders, the PIP's slivers), kept for `RECORD_TTL` seconds and dropped at
    once when the player writes its store: each write moves a generation
    counter before and after it, and an entry read under another generation
    is read again. A player store's writes are its object's insert, save and
    remove (wrapped here); a PIP ledger's are its write transactions
    (`watch_engine`: SQLAlchemy's begin, commit and rollback events of the
    PIP process's engine). Only the console routes read through it, and they
    do not change the records they get."""

    def __init__(self, store: PlayerStore | None = None) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._entries: dict[tuple[str, ...], tuple[int, float, Any]] = {}
        if store is not None:
            for name in ("insert", "save", "remove"):
                setattr(store, name, self._watched(getattr(store, name)))

    def watch_engine(self, engine: Engine) -> RecordCache:
        """Drop what is cached whenever a write transaction of `engine`
        begins and when it ends (read-only transactions, `vnet_write=False`,
        do not count)."""

        def writing(conn: Connection) -> None:
            if conn.get_execution_options().get("vnet_write", True):
                self._bump()

        for name in ("begin", "commit", "rollback"):
            event.listen(engine, name, writing)
        return self

    def _bump(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def _watched(self, write: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            self._bump()
            try:
                return write(*args, **kwargs)
            finally:
                self._bump()
        return watched

    def get(self, key: tuple[str, ...], load: Callable[[], T]) -> T:
        """The record `load` returns, or the one it returned for `key` lately;
        what `load` raises is not kept."""
        now = time.monotonic()
        with self._lock:
            generation = self._generation
            hit = self._entries.get(key)
        if hit is not None and hit[0] == generation and now - hit[1] < RECORD_TTL:
            return cast(T, hit[2])
        rec = load()
        self._keep(key, generation, now, rec)
        return rec

    async def on_loop(self, key: tuple[str, ...], load: Callable[[], T]) -> T:
        """`get` from a loop: a record not cached is read in a worker thread."""
        now = time.monotonic()
        with self._lock:
            generation = self._generation
            hit = self._entries.get(key)
        if hit is not None and hit[0] == generation and now - hit[1] < RECORD_TTL:
            return cast(T, hit[2])
        rec = await asyncio.to_thread(load)
        self._keep(key, generation, now, rec)
        return rec

    def _keep(self, key: tuple[str, ...], generation: int, now: float, rec: object) -> None:
        with self._lock:
            if self._generation == generation:
                if len(self._entries) >= MAX_RECORDS:
                    self._entries.clear()
                self._entries[key] = (generation, now, rec)


class ConsoleHub:
    """A player's console side: its session table and its listener."""

    def __init__(self, name: str, credentials: Credentials, store: str, host: str,
                 limits: ConsoleLimits = DEFAULT_LIMITS) -> None:
        self.credentials = credentials
        self.sessions = SessionTable(store, name)
        try:
            self.server = ConsoleServer(name, credentials, self.sessions, host=host,
                                        limits=limits)
        except BaseException:
            self.sessions.close()
            raise
        self.endpoints: dict[tuple[str, str], ConsoleEndpoint] = {}
        self.calls = AsyncCalls(credentials)  # used on the player's HTTPS loop only
        self.listener_calls = AsyncCalls(credentials)  # on the listener's loop only
        self.listeners: dict[str, str] = {}
        """Next players' console listeners, by name, as they answered last."""
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ConsoleHub:
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop the listener (sessions get a notice) and close the table; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.listener_calls.close()  # on the listener's loop, before it stops
        self.server.stop()
        self.calls.close()
        for endpoint in self.endpoints.values():
            if isinstance(endpoint, NetnsShell):
                endpoint.close()
        self.sessions.close()

    def register(self, node_kind: str, console_kind: str, endpoint: ConsoleEndpoint) -> None:
        self.endpoints[(node_kind, console_kind)] = endpoint

    def relay(self, caller: Identity, vnet: str, req: m.ConsoleRequest,
              upstream: m.ConsoleSession, upstream_name: str,
              follow: tuple[repoint.Key, repoint.Reopen] | None = None) -> m.ConsoleSession:
        """Mint a token for `caller` that opens `upstream` (presenting its
        token); with `follow` (key, reopen), the opened hop is a `Repointable`
        under that key (a VNP's: the session can follow its node to another
        provider)."""
        server = self.server
        self.listeners[upstream_name] = upstream.url

        async def opener() -> tuple[ByteReader, ByteWriter]:
            stream = await server.dial(upstream.url, upstream.token, upstream_name)
            if follow is None:
                return stream
            end = Repointable(follow[0], req.kind, stream, follow[1],
                              repoint.moved_notice(req.node, FOLLOW_KINDS[req.kind]))
            return end, end

        session = self._mint(caller, vnet, req, upstream.url, opener)
        if req.kind in PREPARED_KINDS and not in_process_setup():
            self.server.prepare(token_hash(session.token), opener, session.expires)
        return session

    def direct(self, caller: Identity, vnet: str, req: m.ConsoleRequest, next_hop: str,
               opener: Opener, peer: str) -> Pending:
        """The session of a setup made on this player's listener by `caller`
        (from `peer`): a token minted for it and used at once, so the record
        and its single use are those of a token presented on the listener."""
        token, _ = self.sessions.mint(caller, vnet, req.node, req.kind, next_hop, opener)
        return self.sessions.consume(token, caller, peer)

    async def onward(self, name: str, ref: str, req: m.ConsoleRequest,
                     over_https: Callable[[], Awaitable[m.ConsoleSession]]
                     ) -> tuple[ByteReader, ByteWriter]:
        """The next player's (`name`) end of a session on its `ref`: asked for
        on its listener when this player knows it (it answered a setup over
        HTTPS before), else set up over HTTPS (`over_https`) and greeted with
        its token. On the listener's loop."""
        url = self.listeners.get(name)
        if url is not None:
            try:
                return await self.server.ask(url, ref, req.node, req.kind, name)
            except NotOffered:
                self.listeners.pop(name, None)
            except (SetupRefused, HopRefused):  # the next player's answer
                raise
            except HopError as exc:  # its listener moved (a restart) or is gone: ask it
                log.info("%s: %s's console listener %s failed (%s); asking over HTTPS",
                         self.server.name, name, url, exc)
                self.listeners.pop(name, None)
        session = await over_https()
        self.listeners[name] = session.url
        return await self.server.dial(session.url, session.token, name)

    def _mint(self, caller: Identity, vnet: str, req: m.ConsoleRequest, next_hop: str,
              opener: Opener) -> m.ConsoleSession:
        token, expires = self.sessions.mint(caller, vnet, req.node, req.kind, next_hop, opener)
        return m.ConsoleSession(self.url, token, expires)


def _session_from(call: Any, what: str) -> m.ConsoleSession:
    """Call the next player; its refusals reach the customer as they are."""
    try:
        body: bytes = call().body
    except ClientError as exc:
        _refusal(exc, what)
    return _session_of(body, what)


async def _session_from_loop(call: Awaitable[Reply], what: str) -> m.ConsoleSession:
    """`_session_from` for a call made on the loop."""
    try:
        body = (await call).body
    except ClientError as exc:
        _refusal(exc, what)
    return _session_of(body, what)


def _refusal(exc: ClientError, what: str) -> NoReturn:
    if isinstance(exc, RemoteError):
        if exc.status < 500:
            raise Relayed(exc) from exc
        raise UpstreamFailed(f"{what} failed: {exc.message}") from exc
    raise UpstreamFailed(f"{what} cannot be reached: {exc}") from exc


def _session_of(body: bytes, what: str) -> m.ConsoleSession:
    try:
        return compact.read_session(body)
    except ValueError as exc:
        raise UpstreamFailed(f"{what} answered badly: {exc}") from exc


# -- the routes of each role ------------------------------------------------------------
#
# Each route has two forms: a coroutine that the transport runs on its loop
# (a setup passes through a player without a worker thread: its record comes
# from the cache, or from a worker when not cached, and its call to the next
# player is made on the loop), and the plain handler for callers that
# dispatch in a thread of their own (the VNO's SSH and web front doors).


def _vno_routes(svc: VnoService, hub: ConsoleHub) -> None:
    from vnetlib.players.vno import READY

    vnp = svc.config.vno.vnp
    assert vnp is not None
    records = RecordCache(svc.store)

    def ready(caller: Identity, rec: Record) -> Record:
        if rec.data["status"] != READY:
            raise Conflict(f"VNet {rec.id} is {rec.data['status']}, not ready")
        return rec

    def key(caller: Identity, params: Mapping[str, str]) -> tuple[str, ...]:
        return ("vnet", caller.name, params["id"])

    def console(caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        req = m.console_request_from(m.read(body, "console-request"))  # the customer's: the schema
        rec = ready(caller, records.get(key(caller, params),
                                        lambda: svc._own(caller, params["id"])))
        up = _session_from(lambda: svc.vnp.post(f"/v1/vnets/{svc._vnp_ref(rec)}/console",
                                                compact.request_xml(req)), "the VNP")
        return 200, compact.session_xml(hub.relay(caller, rec.id, req, up, vnp.name))

    async def ask(caller: Identity, vnet: str, req: m.ConsoleRequest,
                  calls: AsyncCalls) -> tuple[Record, m.ConsoleSession]:
        rec = ready(caller, await records.on_loop(("vnet", caller.name, vnet),
                                                  lambda: svc._own(caller, vnet)))
        up = await _session_from_loop(calls.post(
            vnp.url, f"/v1/vnets/{svc._vnp_ref(rec)}/console", compact.request_xml(req),
            expect_name=vnp.name, timeout=svc.config.vno.timeout), "the VNP")
        return rec, up

    async def on_loop(caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        req = m.console_request_from(m.read(body, "console-request"))
        rec, up = await ask(caller, params["id"], req, hub.calls)
        return 200, compact.session_xml(hub.relay(caller, rec.id, req, up, vnp.name))

    async def on_listener(caller: Identity, vnet: str, node: str, kind: str,
                          peer: str) -> Pending:
        """A setup made on the VNO's listener (`VNET-CONSOLE-OPEN`): the
        route's checks (its line was checked to the request's patterns), then
        the session on the caller's connection, its next hop asked for on the
        VNP's listener (or over HTTPS, the first time)."""
        require_role(caller, Role.SP)
        req = m.ConsoleRequest(node, cast(m.ConsoleKindName, kind))
        rec = ready(caller, await records.on_loop(("vnet", caller.name, vnet),
                                                  lambda: svc._own(caller, vnet)))
        ref = svc._vnp_ref(rec)

        async def over_https() -> m.ConsoleSession:
            return await _session_from_loop(hub.listener_calls.post(
                vnp.url, f"/v1/vnets/{ref}/console", compact.request_xml(req),
                expect_name=vnp.name, timeout=svc.config.vno.timeout), "the VNP")

        async def opener() -> tuple[ByteReader, ByteWriter]:
            return await hub.onward(vnp.name, ref, req, over_https)

        return hub.direct(caller, rec.id, req, hub.listeners.get(vnp.name, vnp.url), opener,
                          peer)

    svc.add_route("POST", "/v1/vnets/{id}/console", console, roles={Role.SP}, on_loop=on_loop)
    hub.server.setup = on_listener


def _vnp_routes(svc: VnpService, hub: ConsoleHub) -> None:
    records = RecordCache(svc.store)

    def part_of(parts: list[dict[str, Any]], req: m.ConsoleRequest
                ) -> tuple[dict[str, Any], Upstream]:
        entry = next((p for p in parts if req.node in p["nodes"]), None)
        if entry is None:
            raise NotFound(f"no node {req.node}")
        return entry, svc.upstreams[entry["provider"]]

    def ask(entry: dict[str, Any], up: Upstream, req: m.ConsoleRequest) -> m.ConsoleSession:
        client = PlayerClient(up.url, svc.credentials, CONSOLE_CALL, expect_name=up.name)
        return _session_from(lambda: client.post(f"/v1/slivers/{entry['sliver']}/console",
                                                 compact.request_xml(req)), "the provider")

    def follow(rec: Record, req: m.ConsoleRequest, load: Callable[[], Record]
               ) -> tuple[repoint.Key, repoint.Reopen] | None:
        """A session that follows its node: once moved, the order read again
        (`load`, the route's own owner check) names the node's provider now,
        which is asked for a new session as the setup did."""
        if req.kind not in FOLLOW_KINDS:
            return None

        async def reopen(_: object) -> tuple[ByteReader, ByteWriter]:
            def setup() -> tuple[m.ConsoleSession, str]:
                entry, up = part_of(load().data["parts"], req)
                return ask(entry, up, req), up.name

            session, name = await asyncio.to_thread(setup)
            return await hub.server.dial(session.url, session.token, name)

        return repoint.order_key(hub.server.name, rec.id, req.node), reopen

    def via_part(caller: Identity, ref: str, rec: Record, req: m.ConsoleRequest,
                 load: Callable[[], Record]) -> m.ConsoleSession:
        entry, up = part_of(rec.data["parts"], req)
        return hub.relay(caller, ref, req, ask(entry, up, req), up.name,
                         follow(rec, req, load))

    async def via_part_on_loop(caller: Identity, ref: str, rec: Record,
                               req: m.ConsoleRequest, load: Callable[[], Record]
                               ) -> m.ConsoleSession:
        entry, up = part_of(rec.data["parts"], req)
        session = await _session_from_loop(hub.calls.post(
            up.url, f"/v1/slivers/{entry['sliver']}/console", compact.request_xml(req),
            expect_name=up.name, timeout=CONSOLE_CALL), "the provider")
        return hub.relay(caller, ref, req, session, up.name, follow(rec, req, load))

    def vnet_record(caller: Identity, params: Mapping[str, str]
                    ) -> tuple[tuple[str, ...], Callable[[], Record]]:
        return (("order", caller.name, params["id"]),
                lambda: svc._order(caller, params["id"], "vnet"))

    def vnet_ready(rec: Record, params: Mapping[str, str]) -> Record:
        if rec.data["status"] != "ready":
            raise Conflict(f"VNet {params['id']} is {rec.data['status']}, not ready")
        return rec

    def sliver_record(caller: Identity, params: Mapping[str, str]
                      ) -> tuple[tuple[str, ...], Callable[[], Record]]:
        return (("sliver", caller.name, params["name"]),
                lambda: svc._sliver(caller, params["name"]))

    def sliver_ready(rec: Record, params: Mapping[str, str]) -> Record:
        if rec.data["status"] not in ("provisioned", "ready"):
            raise Conflict(f"sliver {params['name']} is {rec.data['status']}: provision it")
        return rec

    def vnet_console(caller: Identity, params: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes]:
        req = compact.read_request(body)
        key, load = vnet_record(caller, params)
        rec = vnet_ready(records.get(key, load), params)
        return 200, compact.session_xml(via_part(caller, rec.id, rec, req, load))

    async def vnet_console_on_loop(caller: Identity, params: Mapping[str, str],
                                   body: bytes) -> tuple[int, bytes]:
        req = compact.read_request(body)
        key, load = vnet_record(caller, params)
        rec = vnet_ready(await records.on_loop(key, load), params)
        return 200, compact.session_xml(await via_part_on_loop(caller, rec.id, rec, req, load))

    def sliver_console(caller: Identity, params: Mapping[str, str],
                       body: bytes) -> tuple[int, bytes]:
        req = compact.read_request(body)
        key, load = sliver_record(caller, params)
        rec = sliver_ready(records.get(key, load), params)
        return 200, compact.session_xml(via_part(caller, rec.name, rec, req, load))

    async def sliver_console_on_loop(caller: Identity, params: Mapping[str, str],
                                     body: bytes) -> tuple[int, bytes]:
        req = compact.read_request(body)
        key, load = sliver_record(caller, params)
        rec = sliver_ready(await records.on_loop(key, load), params)
        return 200, compact.session_xml(
            await via_part_on_loop(caller, rec.name, rec, req, load))

    async def on_listener(caller: Identity, ref: str, node: str, kind: str,
                          peer: str) -> Pending:
        """A setup made on the VNP's listener by its customer VNO (`ref`: the
        VNet's order) or by a VNP it provides for (`ref`: the sliver): the
        routes' checks, then the provider's end asked for on its listener
        (or over HTTPS, the first time), re-pointable as the routes make it."""
        require_role(caller, Role.VNO, Role.VNP)
        req = m.ConsoleRequest(node, cast(m.ConsoleKindName, kind))
        if caller.role is Role.VNO:
            params = {"id": ref}
            key, load = vnet_record(caller, params)
            rec = vnet_ready(await records.on_loop(key, load), params)
            mine = rec.id
        else:
            params = {"name": ref}
            key, load = sliver_record(caller, params)
            rec = sliver_ready(await records.on_loop(key, load), params)
            mine = rec.name
        entry, up = part_of(rec.data["parts"], req)
        sliver = str(entry["sliver"])
        keep = follow(rec, req, load)

        async def over_https() -> m.ConsoleSession:
            return await _session_from_loop(hub.listener_calls.post(
                up.url, f"/v1/slivers/{sliver}/console", compact.request_xml(req),
                expect_name=up.name, timeout=CONSOLE_CALL), "the provider")

        async def opener() -> tuple[ByteReader, ByteWriter]:
            stream = await hub.onward(up.name, sliver, req, over_https)
            if keep is None:
                return stream
            end = Repointable(keep[0], req.kind, stream, keep[1],
                              repoint.moved_notice(req.node, FOLLOW_KINDS[req.kind]))
            return end, end

        return hub.direct(caller, mine, req, hub.listeners.get(up.name, up.url), opener, peer)

    svc.add_route("POST", "/v1/vnets/{id}/console", vnet_console, roles={Role.VNO},
                  on_loop=vnet_console_on_loop)
    svc.add_route("POST", "/v1/slivers/{name}/console", sliver_console, roles={Role.VNP},
                  on_loop=sliver_console_on_loop)
    hub.server.setup = on_listener


def _pip_routes(svc: PipService, hub: ConsoleHub) -> None:
    hub.register("netns", "shell", NetnsShell(svc.confinement, svc.core.name))
    for hypervisor in ("qemu", "xen"):
        hub.register(hypervisor, "serial", VmSerial(svc.core.name, svc.confinement.hosts))
    hub.register("qemu", "vnc", VmVnc(svc.core.name, svc.confinement.hosts))
    slivers = RecordCache().watch_engine(svc.core.ledger.db.engine)

    def session(caller: Identity, req: m.ConsoleRequest, s: Sliver) -> m.ConsoleSession:
        return hub._mint(caller, s.name, req, f"{req.kind}:{req.node}", endpoint_of(req, s))

    def relocated(opened: Sliver, node: str) -> repoint.Relocate:
        """Where `node` is now per the ledger, if it moved since `opened` (a
        move by another process on this PIP's store: `vnet drain`), waiting
        while the sliver records a move of it in progress."""

        async def where(last: Sliver | None) -> Sliver | None:
            base = last or opened
            place = (base.embedding.node_map.get(node), base.domains.get(node))
            deadline = time.monotonic() + repoint.HOLD_TIMEOUT
            while True:
                s = await asyncio.to_thread(svc.core.ledger.get, opened.id)
                if s is None or s.state not in (State.PROVISIONED, State.READY):
                    return None
                if s.moving is not None and s.moving.node == node \
                        and time.monotonic() < deadline:
                    await asyncio.sleep(RELOCATE_POLL)
                    continue
                now = (s.embedding.node_map.get(node), s.domains.get(node))
                return None if now == place else s

        return where

    def endpoint_of(req: m.ConsoleRequest, s: Sliver) -> Opener:
        """The opener of `req`'s endpoint in sliver `s`, once checked."""
        if s.state not in (State.PROVISIONED, State.READY):
            raise Conflict(f"sliver {s.name} is {s.state.value}: provision it first")
        node = next((n for n in spec_of(s.spec_xml).nodes if n.id == req.node), None)
        if node is None:
            raise NotFound(f"sliver {s.name} has no node {req.node}")
        endpoint = hub.endpoints.get((node.kind.value, req.kind))
        if endpoint is None:
            raise Conflict(f"no {req.kind} console for {node.kind.value} nodes here")
        if isinstance(endpoint, VmSerial) and endpoint.busy(s, req.node):
            raise Conflict(f"console in use: node {req.node}'s serial line is held")

        async def opener() -> tuple[ByteReader, ByteWriter]:
            stream = await endpoint.open(s, req.node)

            async def reopen(moved: Sliver) -> tuple[ByteReader, ByteWriter]:
                return await endpoint.open(moved, req.node)

            notice = repoint.moved_notice(req.node) if isinstance(endpoint, NetnsShell) else b""
            end = Repointable(repoint.key_of(s, req.node), req.kind, stream, reopen, notice,
                              relocated(s, req.node))
            return end, end

        return opener

    def console(caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        req = compact.read_request(body)
        return 200, compact.session_xml(session(caller, req,
                                                svc._sliver(caller, params["name"])))

    async def on_loop(caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        req = compact.read_request(body)
        s = await slivers.on_loop(("sliver", caller.name, params["name"]),
                                  lambda: svc._sliver(caller, params["name"]))
        return 200, compact.session_xml(session(caller, req, s))

    async def on_listener(caller: Identity, name: str, node: str, kind: str,
                          peer: str) -> Pending:
        """A setup made on the PIP's listener by its customer VNP: the
        route's checks, then the endpoint on the caller's connection."""
        require_role(caller, Role.VNP)
        req = m.ConsoleRequest(node, cast(m.ConsoleKindName, kind))
        s = await slivers.on_loop(("sliver", caller.name, name),
                                  lambda: svc._sliver(caller, name))
        return hub.direct(caller, s.name, req, f"{req.kind}:{req.node}", endpoint_of(req, s),
                          peer)

    svc.add_route("POST", "/v1/slivers/{name}/console", console, roles={Role.VNP},
                  on_loop=on_loop)
    hub.server.setup = on_listener


def attach_console(service: PipService | VnpService | VnoService, credentials: Credentials,
                   config: PlayerConfig, limits: ConsoleLimits = DEFAULT_LIMITS) -> ConsoleHub:
    """The hub of a player's service, its routes added (not started)."""
    from vnetlib.players.pip import PipService
    from vnetlib.players.vno import VnoService

    hub = ConsoleHub(config.name, credentials, config.store, config.host, limits)
    if isinstance(service, PipService):
        _pip_routes(service, hub)
    elif isinstance(service, VnoService):
        _vno_routes(service, hub)
    else:
        _vnp_routes(service, hub)
    return hub

