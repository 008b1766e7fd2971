"""The VNO's web console: noVNC served over HTTPS, bridged to a VNC console
session through the chain of players.

Browsers present no client certificate here, so an SP asks the VNO (mutual
TLS, `POST /v1/vnets/{id}/web-console`) for a one-time link,
`https://HOST:PORT/vnc/<token>`: valid for LINK_TTL seconds, bound to that
SP, VNet and node. Opening it uses it (a second GET gets an error page) and
redirects to noVNC's vnc_lite.html with the websocket path `ws/<token>`; the
websocket, accepted once, is set up exactly as that SP's
`POST /v1/vnets/{id}/console` with kind `vnc` would be (dispatched
in-process, like the SSH front door), and the RFB bytes are relayed as
binary websocket messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import WSMsgType, web
from lxml import etree

from vnetlib.console.loop import LoopThread
from vnetlib.console.sessions import TokenRefused, setup_in_process
from vnetlib.console.sshd import _error_message
from vnetlib.console.wire import ByteReader, ByteWriter, HopError, close_quietly
from vnetlib.players import messages as m
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.server import Conflict, NotFound, Service

if TYPE_CHECKING:
    from vnetlib.console.broker import ConsoleHub
    from vnetlib.players.config import PlayerConfig
    from vnetlib.players.sp import ServiceProvider
    from vnetlib.players.vno import VnoService

log = logging.getLogger(__name__)

NOVNC = Path("/usr/share/novnc")
LINK_TTL = 60.0
OPEN_TIMEOUT = 20.0
CHUNK = 64 << 10
MAX_GRANTS = 256


@dataclass(frozen=True, slots=True)
class Grant:
    """A one-time link: who asked, for which console, and how far it got."""

    sp: Identity
    vnet: str
    node: str
    expires: float
    stage: str = "new"  # new -> page (the link was opened) -> the websocket took it


class Grants:
    """The one-time links, in memory only (they live a minute)."""

    def __init__(self, ttl: float = LINK_TTL) -> None:
        self.ttl = ttl
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def mint(self, sp: Identity, vnet: str, node: str) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            for t in [t for t, g in self._grants.items() if g.expires <= now]:
                del self._grants[t]
            if len(self._grants) >= MAX_GRANTS:
                raise Conflict("too many web console links pending; try later")
            self._grants[token] = Grant(sp, vnet, node, now + self.ttl)
        return token, now + self.ttl

    def take(self, token: str, stage: str) -> Grant:
        """The link at `stage` (new: the page; page: the websocket), moved on;
        TokenRefused if unknown, expired or used."""
        with self._lock:
            g = self._grants.get(token)
            if g is None or g.stage != stage:
                raise TokenRefused("unknown or used link")
            if g.expires <= time.time():
                del self._grants[token]
                raise TokenRefused("expired link")
            if stage == "new":
                self._grants[token] = replace(g, stage="page")
            else:
                del self._grants[token]
            return g


def web_console_xml(url: str, expires: float) -> bytes:
    el = etree.Element(f"{{{m.NS}}}web-console", nsmap={None: m.NS})  # type: ignore[dict-item]
    el.set("url", url)
    el.set("expires", dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds"))
    return etree.tostring(el, xml_declaration=True, encoding="UTF-8")


def web_console_from(body: bytes) -> tuple[str, float]:
    """(url, expiry in epoch seconds) of a `<web-console>` reply."""
    el = m.parse_reply(body, "web-console")
    return el.get("url", ""), dt.datetime.fromisoformat(el.get("expires", "")).timestamp()


def _page(status: int, title: str, text: str) -> web.Response:
    body = (f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>")
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


class WebConsole(LoopThread):
    """The HTTPS listener at `listen` (bound at start, in its own thread)."""

    _thread_name = "vno-web"

    def __init__(self, service: Service, hub: ConsoleHub, credentials: Credentials,
                 listen: str, novnc: Path = NOVNC, ttl: float = LINK_TTL) -> None:
        self.service = service
        self.hub = hub
        self.credentials = credentials
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port or 0)
        self.novnc = novnc
        self.grants = Grants(ttl)
        super().__init__()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def link(self, sp: Identity, vnet: str, node: str) -> tuple[str, float]:
        token, expires = self.grants.mint(sp, vnet, node)
        return f"{self.base_url}/vnc/{token}", expires

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.credentials.cert_path), str(self.credentials.key_path))
        return ctx

    def start(self) -> WebConsole:
        if not (self.novnc / "vnc_lite.html").exists():
            raise FileNotFoundError(f"noVNC is not installed at {self.novnc} "
                                    "(scripts/install-webconsole.sh)")
        self._start_loop()
        return self

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_get("/vnc/{token}", self._link)
        app.router.add_get("/ws/{token}", self._websocket)
        app.router.add_static("/novnc/", self.novnc, follow_symlinks=True)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._tls())
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _shutdown(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(message=b"the VNO is stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the browser's side --------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        try:
            g = self.grants.take(token, "new")
        except TokenRefused as exc:
            return _page(403, "vnet web console: refused",
                         f"{exc}: ask for a new one with `vnet console VNET NODE --kind vnc --web`")
        log.info("web: link of %s for %s/%s opened from %s", g.sp, g.vnet, g.node,
                 request.remote)
        title = quote(f"{g.vnet}/{g.node}", safe="")
        raise web.HTTPSeeOther(f"/novnc/vnc_lite.html?path=ws/{token}&scale=true"
                               f"&title={title}", headers={"Cache-Control": "no-store"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        try:
            g = self.grants.take(token, "page")
        except TokenRefused as exc:
            return _page(403, "vnet web console: refused", str(exc))
        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=CHUNK * 4)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._session(ws, g, request.remote or "?")
        finally:
            self._sockets.discard(ws)
            await ws.close()
        return ws

    async def _session(self, ws: web.WebSocketResponse, g: Grant, peer: str) -> None:
        body = m.console_request_xml(m.ConsoleRequest(g.node, "vnc"))
        outcome = await asyncio.to_thread(
            setup_in_process, self.service.dispatch, "POST",
            f"/v1/vnets/{g.vnet}/console", g.sp, body)
        if outcome.status != 200:
            await ws.close(code=4403, message=_error_message(outcome.body).encode()[:120])
            return
        session = m.console_session_from(m.parse_reply(outcome.body, "console-session"))
        try:
            pending = await asyncio.to_thread(self.hub.sessions.consume, session.token, g.sp,
                                              f"web {peer}")
        except TokenRefused as exc:
            await ws.close(code=4403, message=str(exc).encode())
            return
        result = "refused"
        try:
            try:
                reader, writer = await asyncio.wait_for(pending.open(), OPEN_TIMEOUT)
            except (TimeoutError, HopError) as exc:
                result = f"next hop failed: {exc or 'timeout'}"
                await ws.close(code=4502, message=(str(exc) or "no answer").encode()[:120])
                return
            log.info("web: vnc console of %s on %s/%s from %s opened", g.sp, g.vnet, g.node,
                     peer)
            try:
                result = await _relay(ws, reader, writer)
            finally:
                await close_quietly(writer)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.hub.sessions.finish, pending.hash, result)


async def _relay(ws: web.WebSocketResponse, reader: ByteReader, writer: ByteWriter) -> str:
    async def up() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type == WSMsgType.TEXT:
                writer.write(msg.data.encode())
                await writer.drain()
            elif msg.type == WSMsgType.ERROR:
                return

    async def down() -> None:
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)

    tasks = (asyncio.create_task(up()), asyncio.create_task(down()))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return "closed by the browser" if tasks[0] in done else "closed by the node side"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def attach_web(service: VnoService, hub: ConsoleHub, config: PlayerConfig,
               credentials: Credentials) -> WebConsole:
    """The VNO's web console from [vno] web_listen, its link route added (not started)."""
    from vnetlib.players.vno import READY

    web_console = WebConsole(service, hub, credentials, config.vno.web_listen)

    def link(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        req = m.console_request_from(m.read(body, "console-request"))
        if req.kind != "vnc":
            raise Conflict(f"the web console shows vnc consoles, not {req.kind}")
        rec = service._own(caller, params["id"])
        if rec.data["status"] != READY:
            raise Conflict(f"VNet {rec.id} is {rec.data['status']}, not ready")
        if web_console._loop is None:
            raise NotFound("this VNO has no web console running")
        url, expires = web_console.link(caller, rec.id, req.node)
        return 200, web_console_xml(url, expires)

    service.add_route("POST", "/v1/vnets/{id}/web-console", link, roles={Role.SP})
    return web_console


def web_link(sp: ServiceProvider, vnet: str, node: str) -> tuple[str, float]:
    """The SP's side: a one-time web console link for `node`'s vnc console,
    (url, expiry in epoch seconds), asked of its VNO with mutual TLS."""
    body = m.console_request_xml(m.ConsoleRequest(node, "vnc"))
    return web_console_from(sp.client.post(f"/v1/vnets/{vnet}/web-console", body).body)
