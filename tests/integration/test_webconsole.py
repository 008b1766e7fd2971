"""The VNO's web console in a real headless Chromium: a one-time link asked
by the SP (mutual TLS) opens noVNC, whose websocket the VNO bridges to the
VNC display of a QEMU VM node through the real chain VNO -> VNP -> PIP ->
libvirt's VNC server. The screenshot must show the guest's screen; a replayed
link gets an error page and no VNC bytes; another SP's VNet is refused like
a missing one. Screenshots are kept in $VNET_TEST_ARTIFACTS (or /tmp)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.integration.players_fixtures import Players, Substrates
from vnetlib.console.webconsole import NOVNC, web_link
from vnetlib.lab import vms
from vnetlib.players.client import RemoteError
from vnetlib.players.config import Upstream, VnoSection
from vnetlib.players.node import ManagementNode
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet
from vnetlib.vm import libvirtd

CHROMIUM = shutil.which("chromium")
VM = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="webvnc">
  <node id="vm1" kind="vm" hypervisor="qemu" cpu="1" memory="128" location="berlin">
    <console kind="vnc"/>
  </node>
</vnet>"""
ARTIFACTS = Path(os.environ.get("VNET_TEST_ARTIFACTS", "/tmp/vnet-test-artifacts")) / "webconsole"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and (NOVNC / "vnc_lite.html").exists() and shutil.which("virsh")
         and shutil.which("qemu-system-x86_64") and libvirtd.available()),
    reason="needs chromium, novnc (scripts/install-webconsole.sh), libvirt and QEMU")


@dataclass
class Web:
    players: Players
    vno: ManagementNode
    vnet: str
    sp: ServiceProvider
    sp2: ServiceProvider
    boot_seconds: float


@pytest.fixture(scope="module")
def web(lab_ca: LabCA, substrates: Substrates,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    root = tmp_path_factory.mktemp("web")
    daemons = libvirtd.Daemons(root / "libvirt")
    players = Players(lab_ca, root)
    try:
        daemons.start()
        players.pip("pip-a", substrates.a)
        players.vnp("vnp", ["pip-a"])
        up = Upstream("vnp", players.nodes["vnp"].url)
        vno = players.start(players.config("vno", Role.VNO, vno=VnoSection(
            vnp=up, web_listen="127.0.0.1:0")))
        assert vno.web is not None
        sp = ServiceProvider(vno.url, players.creds("sp", Role.SP), 600.0, vno_name="vno")
        sp2 = ServiceProvider(vno.url, players.creds("sp2", Role.SP), 600.0, vno_name="vno")
        started = time.monotonic()
        view = sp.request_vnet(parse_vnet(VM))
        assert view.status == "ready"
        yield Web(players, vno, view.id, sp, sp2, time.monotonic() - started)
        sp.delete(view.id)
    finally:
        players.stop_all()
        vms.remove_domains([substrates.a])
        daemons.stop()


def screenshot(url: str, name: str, wait_for: str = "Connected") -> tuple[Path, str, float]:
    """Chromium (headless, driven over the DevTools protocol) opens `url`, waits
    up to 20 s for noVNC's status line to start with `wait_for`, and takes a
    screenshot (kept as an artifact); (png, the page's status, seconds)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / name
    png.unlink(missing_ok=True)
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="vnet-chromium-") as profile:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--ignore-certificate-errors", "--window-size=1024,768",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert time.monotonic() < deadline and proc.poll() is None, "no DevTools port"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            started = time.monotonic()
            data, status = asyncio.run(_capture(port, url, wait_for))
            took = time.monotonic() - started
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    png.write_bytes(data)
    print(f"screenshot: {png} ({status!r}, {took:.1f} s)")
    return png, status, took


async def _capture(port: int, url: str, wait_for: str) -> tuple[bytes, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
            page = next(t for t in await reply.json() if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=1 << 26) as ws:
            ids = iter(range(1, 1 << 30))

            async def call(method: str, **params: object) -> dict[str, object]:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                async for msg in ws:
                    body = json.loads(msg.data)
                    if body.get("id") == n:
                        result: dict[str, object] = body.get("result", {})
                        return result
                raise AssertionError("DevTools closed")

            await call("Page.enable")
            await call("Page.navigate", url=url)
            status = ""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                got = await call("Runtime.evaluate", expression=(
                    "(document.getElementById('status')||document.body||{}).textContent"))
                status = str(dict(got.get("result", {})).get("value", ""))  # type: ignore[call-overload]
                if status.startswith(wait_for):
                    await asyncio.sleep(3)  # the guest's screen, drawn
                    break
            shot = await call("Page.captureScreenshot", format="png")
            return base64.b64decode(str(shot["data"])), status


def pixels(png: Path) -> list[tuple[int, int, int]]:
    """The RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = bpp = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    out: list[tuple[int, int, int]] = []
    for y in range(height):
        row = y * (stride + 1)
        ftype, line = raw[row], bytearray(raw[row + 1:row + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.extend(tuple(line[x:x + 3]) for x in range(0, stride, bpp))  # type: ignore[misc]
        prev = line
    return out


def http_get(url: str) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_browser_shows_the_vms_screen_and_a_replayed_link_is_refused(web: Web) -> None:
    url, expires = web_link(web.sp, web.vnet, "vm1")
    assert url.startswith(web.vno.web.base_url + "/vnc/")  # type: ignore[union-attr]
    assert 55 <= expires - time.time() <= 61
    shot, status, took = screenshot(url, "vnc-screen.png")
    colors = Counter(pixels(shot))
    print(f"chromium took {took:.1f} s; VNet up in {web.boot_seconds:.1f} s; "
          f"colours: {colors.most_common(4)}")
    assert status.startswith("Connected to "), status
    # noVNC's page is dimgrey with a blue-grey bar; the guest's VGA screen is
    # black with light-grey text: only a VNC session through the chain draws it.
    black = colors[(0, 0, 0)]
    assert black > 100_000, colors.most_common(6)
    text = sum(n for (r, g, b), n in colors.items() if r == g == b and r >= 150)
    assert text > 200, colors.most_common(6)

    rows = [r for r in web.vno.console.sessions.rows() if r["kind"] == "vnc"]
    assert rows and rows[-1]["owner"] == "sp:sp" and rows[-1]["peer"].startswith("web ")
    assert rows[-1]["next_hop"] == web.players.nodes["vnp"].console.url
    pip_rows = web.players.nodes["pip-a"].console.sessions.rows()
    assert any(r["kind"] == "vnc" and r["next_hop"] == "vnc:vm1" for r in pip_rows)

    # the same link again: an error page, no noVNC, no session
    replay, status, _ = screenshot(url, "vnc-replayed.png", wait_for="vnet web console")
    assert "unknown or used link" in status
    assert Counter(pixels(replay))[(0, 0, 0)] < black // 10
    code, body = http_get(url)
    assert code == 403 and "unknown or used link" in body
    token = url.rsplit("/", 1)[1]
    code, body = http_get(f"{web.vno.web.base_url}/ws/{token}")  # type: ignore[union-attr]
    assert code == 403 and "RFB" not in body
    assert len([r for r in web.vno.console.sessions.rows() if r["kind"] == "vnc"]) == len(rows)


def test_expired_links_and_other_sps_vnets_are_refused(web: Web) -> None:
    assert web.vno.web is not None
    grants = web.vno.web.grants
    old, grants.ttl = grants.ttl, 0.3
    try:
        url, _ = web_link(web.sp, web.vnet, "vm1")
    finally:
        grants.ttl = old
    time.sleep(0.5)
    status, body = http_get(url)
    assert status == 403 and "expired link" in body

    with pytest.raises(RemoteError) as theirs:
        web_link(web.sp2, web.vnet, "vm1")
    with pytest.raises(RemoteError) as missing:
        web_link(web.sp2, "v0000000000", "vm1")
    assert theirs.value.status == missing.value.status == 404
    assert (theirs.value.message.replace(web.vnet, "X")
            == missing.value.message.replace("v0000000000", "X"))
