"""Open console sessions that follow their node when it moves (issue #13).

At the PIP, the end of every console session is a `Repointable`: the
endpoint's stream (a netns node's shell, a VM's serial line) behind a
wrapper that can open the node's endpoint again and carry on with it. The
hops above the PIP keep their connections and notice nothing but the bytes.

The migration code of the PIP process calls, around a move of a node:

- `hold(sliver, node)` before it touches a host: the node's sessions outlive
  the end of their endpoint (a VM's source QEMU that stops after a live
  migration) and wait for `moved` instead of closing;
- `moved(sliver, node)` once the move is over, successful or undone, with
  the sliver as the ledger has it then: each session opens the endpoint
  again where that sliver says the node is (a netns node: a new confined
  shell in the re-created namespace, after a one-line notice, the old shell
  killed; a VM: the serial line of the domain it runs as now), and the hold
  ends. A session whose endpoint cannot be opened again ends with a notice.

Both are no-ops where no console session is open (a direct `vnet migrate`).
A move made by another process on the PIP's store (the operator's `vnet
drain`) calls them where no session lives. So a PIP's session also asks
`relocate` (the PIP reads its ledger) every WATCH_EVERY seconds and when its
endpoint ends unheld: while the sliver records a move of the node it waits,
and if the node is elsewhere now it follows it as above (a netns node's old
shell would otherwise live on in the namespace the move deleted).

At the VNP, the next hop of every session on a node of an order (the
provider's listener) is a `Repointable` too, for a move of the node to
another provider (issue #13, between PIPs): the VNP's move calls
`hold_order(vnp, order, node)` before it changes any part, and
`moved_order(vnp, order, node)` once the order's parts say where the node is
(moved or put back): each session then asks the provider that holds the node
now for a new console session, as its setup did, and carries on with it
after a one-line notice; the hops above the VNP (the VNO, the client) keep
their connections. The old provider's end is closed (its shell killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from vnetlib.console.wire import ByteReader, ByteWriter, HopError, close_quietly
from vnetlib.core.records import Sliver

log = logging.getLogger(__name__)

HOLD_TIMEOUT = 120.0
"""How long a held session waits for `moved` once its endpoint ended."""
WATCH_EVERY = 2.0
"""Seconds between a PIP session's looks at where its node is (`relocate`)."""
SWITCH_TIMEOUT = 30.0
"""How long `moved` waits for the sessions to open their endpoints again."""

Key = tuple[str, str, str]  # (substrate, sliver id, node); a VNP's: ("vnp:NAME", order, node)
Reopen = Callable[[Any], Awaitable[tuple[ByteReader, ByteWriter]]]
"""Opens the endpoint again, given where the node is now (`moved`'s sliver at
a PIP; nothing at a VNP, which reads its order again)."""
Relocate = Callable[[Any], Awaitable[Any]]
"""Given where the session's endpoint was last opened (None: where the
session opened), where the node is now if it moved since (once a move in
progress ends), else None: asked when the endpoint ends unheld."""

_lock = threading.Lock()
_live: dict[Key, weakref.WeakSet[Repointable]] = {}
"""The open sessions per node; weak, so one that is never closed is still
collected (with its connection) as it would be without this registry."""
_held: dict[Key, float] = {}  # key -> since (monotonic), for sessions opened meanwhile


def key_of(sliver: Sliver, node: str) -> Key:
    return (sliver.substrate, sliver.id, node)


def order_key(vnp: str, order: str, node: str) -> Key:
    return (f"vnp:{vnp}", order, node)


def moved_notice(node: str, what: str = "shell") -> bytes:
    return (f"\r\n[vnet console: node {node} was moved; this is a new {what} there, "
            "what ran in the old one is gone]\r\n").encode()


class Repointable:
    """An endpoint's (reader, writer) that `switch` replaces by a new one on
    the same loop. Reads of an old stream that ends because of a switch, or
    while the node is held, continue on the new one; writes that fail while
    held are dropped (the node is between two places)."""

    def __init__(self, key: Key, kind: str, stream: tuple[ByteReader, ByteWriter],
                 reopen: Reopen, notice: bytes = b"", relocate: Relocate | None = None) -> None:
        self.key = key
        self.kind = kind
        self.loop = asyncio.get_running_loop()
        self._reader, self._writer = stream
        self._reopen = reopen
        self._relocate = relocate
        self._where: Any = None  # where the last switch opened the endpoint
        self._watch = None if relocate is None else self.loop.create_task(self._watching())
        self._notice_text = notice
        self._notice = b""
        self._generation = 0
        self._changed = asyncio.Event()
        self._closed = False
        with _lock:
            since = _held.get(key)
            self.held = since is not None and time.monotonic() - since < HOLD_TIMEOUT
            _live.setdefault(key, weakref.WeakSet()).add(self)

    # -- the stream the relay sees ---------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        while True:
            if self._notice:
                data, self._notice = self._notice, b""
                return data
            generation = self._generation
            try:
                data = await self._reader.read(n)
            except OSError:
                if generation == self._generation and not self.held:
                    raise
                data = b""
            if generation != self._generation:
                continue  # the old endpoint's last bytes or its end: the new one now
            if data:
                return data
            if self.held and not self._closed and await self._switched(generation):
                continue
            if not self._notice and not self._closed and await self._followed():
                continue
            if self._notice:
                continue  # why it ends, then the end
            return b""

    async def _watching(self) -> None:
        while not self._closed:
            await asyncio.sleep(WATCH_EVERY)
            if not self.held and not self._closed:
                await self._followed()

    async def _followed(self) -> bool:
        """The endpoint ended unheld, or the watch looks: if the node moved
        meanwhile (a move no `hold` announced in this process), follow it;
        False if it did not."""
        if self._relocate is None:
            return False
        try:
            where = await self._relocate(self._where)
        except Exception as exc:  # the session then ends as it would have
            log.warning("console on %s/%s: where is the node now? %s", *self.key[1:], exc)
            return False
        if where is None or self._closed or self.held:
            return False
        with contextlib.suppress(HopError):  # its notice says why the session ends
            await self.switch(where)
        return True

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        """The current end's transport (a relay counts its buffered bytes)."""
        return getattr(self._writer, "transport", None)

    @property
    def pending(self) -> bytes:
        return bytes(getattr(self._writer, "pending", b""))

    async def drain(self) -> None:
        generation = self._generation
        try:
            await self._writer.drain()
        except OSError:
            if generation == self._generation and not self.held:
                raise
            log.info("console input for %s/%s dropped while it moves", *self.key[1:])

    def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        with _lock:
            entries = _live.get(self.key)
            if entries is not None:
                entries.discard(self)
                if not entries:
                    del _live[self.key]
        self._writer.close()
        self._changed.set()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    # -- switching ---------------------------------------------------------------------------

    async def _switched(self, generation: int) -> bool:
        """Wait (bounded) for a switch past `generation`; False if none came
        (the hold ended without one, or timed out)."""
        deadline = time.monotonic() + HOLD_TIMEOUT
        while self._generation == generation and self.held and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self._generation != generation and not self._closed

    async def switch(self, where: Any) -> None:
        """Close the endpoint (its shell killed, its serial line's lock
        released), then open it again where `where` (a PIP's sliver) has the
        node; reads wait meanwhile, writes are dropped. HopError: the session
        then ends, with a notice."""
        if self._closed:
            return
        old = self._writer
        self.held = True
        self._generation += 1
        self._reader = self._writer = _Ended()
        await close_quietly(old)
        try:
            stream = await self._reopen(where)
        except (HopError, OSError, RuntimeError) as exc:
            self._notice = (f"\r\n[vnet console: node {self.key[2]} was moved and its console "
                            f"could not be opened again: {exc}]\r\n").encode()
            self.release()
            raise HopError(str(exc)) from exc
        if self._closed:
            await close_quietly(stream[1])
            return
        self._where = where
        self._reader, self._writer = stream
        self._generation += 1
        self._notice = self._notice_text
        self.release()

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        self._changed.set()


class _Ended:
    """The endpoint of a session that could not follow its node."""

    async def read(self, n: int = -1) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def _sessions(key: Key) -> list[Repointable]:
    with _lock:
        return list(_live.get(key, ()))


def hold(sliver: Sliver, node: str) -> int:
    """A move of `node` starts: its console sessions (open now or opened
    until `moved`) wait for it instead of ending with their endpoint. The
    number of sessions open now. From any thread."""
    return _hold(key_of(sliver, node))


def moved(sliver: Sliver, node: str, *, reconnect: bool = True,
          timeout: float = SWITCH_TIMEOUT) -> int:
    """The move of `node` is over (done or undone) and `sliver` is the
    ledger's record now: every open console session on the node opens its
    endpoint again there (unless `reconnect` is False: the node did not
    leave its place), and the hold ends. Returns how many sessions follow
    the node; blocks until they did (at most `timeout` seconds). From any
    thread but a console loop's."""
    return _moved(key_of(sliver, node), sliver, reconnect, timeout,
                  sliver.embedding.node_map.get(node, "?"))


def hold_order(vnp: str, order: str, node: str) -> int:
    """At the VNP `vnp` (its player name): a move of `node` of `order` (the
    id of the VNP's order record, or of its sliver record when it acts as a
    PIP) to another provider starts; its sessions wait for `moved_order`
    (at most `HOLD_TIMEOUT` s after their provider's end closed) instead of
    ending. The number of sessions open now. From any thread."""
    return _hold(order_key(vnp, order, node))


def moved_order(vnp: str, order: str, node: str, *, reconnect: bool = True,
                timeout: float = SWITCH_TIMEOUT) -> int:
    """At the VNP: the move is over (done or undone) and the order's stored
    parts say which provider holds `node` now: each open session on it asks
    that provider for a new console session and continues there after a
    notice (`reconnect=False`: the node never left its provider, the
    sessions carry on as they are); the hold ends. Returns how many sessions
    followed; blocks (at most `timeout` s). From any thread but a console
    loop's (the VNP's handler threads are fine)."""
    return _moved(order_key(vnp, order, node), None, reconnect, timeout, "its provider")


def _hold(key: Key) -> int:
    with _lock:
        _held[key] = time.monotonic()
    sessions = _sessions(key)
    for s in sessions:
        with contextlib.suppress(RuntimeError):  # its loop stopped: the session is over
            s.loop.call_soon_threadsafe(s.hold)
    return len(sessions)


def _moved(key: Key, where: Any, reconnect: bool, timeout: float, to: str) -> int:
    with _lock:
        _held.pop(key, None)
    sessions = _sessions(key)
    if not reconnect:
        for s in sessions:
            with contextlib.suppress(RuntimeError):
                s.loop.call_soon_threadsafe(s.release)
        return 0
    futures = []
    for s in sessions:
        with contextlib.suppress(RuntimeError):
            futures.append(asyncio.run_coroutine_threadsafe(s.switch(where), s.loop))
    followed = 0
    deadline = time.monotonic() + timeout
    for future in futures:
        try:
            future.result(max(0.0, deadline - time.monotonic()))
            followed += 1
        except Exception as exc:  # each session's own failure, logged
            log.warning("console session on %s/%s did not follow the move: %s",
                        key[1], key[2], exc or "timeout")
    log.info("%d console sessions on %s/%s follow it to %s", followed, key[1], key[2], to)
    return followed


def open_sessions(sliver: Sliver, node: str) -> int:
    """How many console sessions on the node are open at this PIP (for tests)."""
    return len(_sessions(key_of(sliver, node)))


def open_order_sessions(vnp: str, order: str, node: str) -> int:
    """How many console sessions on the node of `order` the VNP relays (for tests)."""
    return len(_sessions(order_key(vnp, order, node)))
