"""`vnet lab up --players-apart --connection ssh`: every player on a
management host of its own (a namespace with its own address), PIPs reaching
their hosts over SSH, players reaching each other only over the lab's
players network, with certificates that name those addresses."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, netns_list, new_lab
from vnetlib.lab import apart
from vnetlib.players import config as player_config
from vnetlib.players.pki import Credentials
from vnetlib.spec import load_vnet

TWO_PIPS = EXAMPLES / "figure6-2pip.xml"


@pytest.fixture(scope="module")
def lab_apart(vnet: Vnet) -> Iterator[Lab]:
    made = new_lab(vnet, "--pips", "2", "--hosts", "2", "--players-apart", "--connection", "ssh")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _players(vnet: Vnet, lab: Lab) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = vnet.json("lab", "status", "--name", lab.name)["players"]
    return found


def _lab_dir(vnet: Vnet, lab: Lab) -> Path:
    return Path(vnet.env["VNET_HOME"]) / "labs" / lab.name


def _credentials(vnet: Vnet, lab: Lab, name: str) -> Credentials:
    d = _lab_dir(vnet, lab) / "credentials" / name
    return Credentials(d / f"{name}.pem", d / f"{name}.key", d / "ca.pem", d / "crl.pem")


def _listening(netns: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_each_player_runs_on_its_own_address_in_its_own_namespace(
    vnet: Vnet, lab_apart: Lab
) -> None:
    players = _players(vnet, lab_apart)
    assert set(players) == {"pip1", "pip2", "vnp", "vno"}
    addresses = set()
    for name, player in players.items():
        assert player["running"], name
        netns = f"vl-{lab_apart.name}-{name}"
        assert netns in netns_list()
        host = urlsplit(str(player["url"])).hostname
        assert host is not None and host.startswith("198.18.") and host not in addresses
        addresses.add(host)
        # The process is in that namespace, listens on its address only, never
        # on loopback, and its certificate names that address.
        pid = int((_lab_dir(vnet, lab_apart) / "run" / f"{name}.pid").read_text())
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
        assert _listening(netns) == {host}, name
        assert host in apart.cert_addresses(_credentials(vnet, lab_apart, name).cert_path)


def test_figure6_across_two_pips_with_players_apart_pings(vnet: Vnet, lab_apart: Lab) -> None:
    result = vnet.json("up", str(TWO_PIPS), "--lab", lab_apart.name)
    vnet_id = result["vnet"]
    assert result["status"] == "ready"
    # The PIPs deployed over SSH from their own namespaces: each PIP's
    # management host holds a connection to its substrate's sshd (kept for
    # a minute by ControlPersist).
    for pip in ("pip1", "pip2"):
        out = subprocess.run(["ip", "netns", "exec", f"vl-{lab_apart.name}-{pip}", "ss", "-Htn",
                              "state", "established", "dport", "=", "22"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip(), f"{pip} has no SSH connection to its hosts"
    spec = load_vnet(TWO_PIPS)
    for link in spec.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            out = vnet.json("exec", "--lab", lab_apart.name, vnet_id, src.node, "--",
                            "ping", "-c", "1", "-W", "2", peer)
            assert out["rc"] == 0, f"{link.id}: {src.node} -> {dst.node} failed: {out}"
    vnet.run("down", "--lab", lab_apart.name, vnet_id)
    assert not {n for n in netns_list() if n.startswith(f"vn-{lab_apart.name}p")}


def _serve_tls_once(netns: str, address: str, port: int, creds: Credentials) -> subprocess.Popen[
        bytes]:
    """`openssl s_server` in `netns` at address:port presenting `creds`."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "openssl", "s_server", "-quiet", "-naccept", "1",
         "-accept", f"{address}:{port}", "-cert", str(creds.cert_path),
         "-key", str(creds.key_path)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f"{address}:{port}" in subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-Hltn"], capture_output=True,
                text=True).stdout:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"openssl s_server did not listen at {address}:{port}")


def _handshake(creds: Credentials, address: str, port: int) -> None:
    ctx = creds.client_context()
    with socket.create_connection((address, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=address):
        pass


def test_a_certificate_presented_from_the_wrong_address_is_refused(
    vnet: Vnet, lab_apart: Lab
) -> None:
    players = _players(vnet, lab_apart)
    pip1 = urlsplit(str(players["pip1"]["url"])).hostname
    pip2 = urlsplit(str(players["pip2"]["url"])).hostname
    assert pip1 and pip2
    pip1_creds = _credentials(vnet, lab_apart, "pip1")
    vnp_creds = _credentials(vnet, lab_apart, "vnp")
    port = 47000 + os.getpid() % 1000
    # pip1's certificate from pip1's own address: accepted by a client (the VNP's
    # credentials) that calls that address.
    ok = _serve_tls_once(f"vl-{lab_apart.name}-pip1", pip1, port, pip1_creds)
    try:
        _handshake(vnp_creds, pip1, port)
    finally:
        ok.kill()
        ok.wait()
    # The same certificate presented from pip2's address: refused.
    bad = _serve_tls_once(f"vl-{lab_apart.name}-pip2", pip2, port, pip1_creds)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            _handshake(vnp_creds, pip2, port)
    finally:
        bad.kill()
        bad.wait()


# One HTTPS call with a player's credentials, from whatever namespace runs it:
# prints the HTTP status and the error document.
CALL = """
import http.client, sys
from pathlib import Path
from vnetlib.players.pki import Credentials
d, name, host, port = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
creds = Credentials(d / f"{name}.pem", d / f"{name}.key", d / "ca.pem", d / "crl.pem")
conn = http.client.HTTPSConnection(host, port, context=creds.client_context(), timeout=10)
conn.request("GET", "/v1/version")
answer = conn.getresponse()
print(answer.status, answer.read().decode(errors="replace"))
"""


def _call(vnet: Vnet, lab: Lab, netns: str | None, name: str, url: str) -> tuple[int, str]:
    parts = urlsplit(url)
    argv = [sys.executable, "-c", CALL, str(_lab_dir(vnet, lab) / "credentials" / name), name,
            str(parts.hostname), str(parts.port)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=vnet.env,
                          check=True)
    status, _, text = done.stdout.partition(" ")
    return int(status), text


def test_a_stolen_key_used_from_another_address_is_refused(vnet: Vnet, lab_apart: Lab) -> None:
    players = _players(vnet, lab_apart)
    vnp_url = str(players["vnp"]["url"])
    configs = _lab_dir(vnet, lab_apart) / "players"
    for name in players:
        assert player_config.load(configs / f"{name}.toml").server.check_source_address, name
    log = _lab_dir(vnet, lab_apart) / "log" / "vnp.log"
    seen = log.stat().st_size
    # pip1's key from pip1's own management host: a known caller.
    status, _ = _call(vnet, lab_apart, f"vl-{lab_apart.name}-pip1", "pip1", vnp_url)
    assert status == 200
    # The same key and certificate from another machine (the lab's root
    # namespace, 198.18.x.1): refused, and the VNP's log says why.
    status, text = _call(vnet, lab_apart, None, "pip1", vnp_url)
    assert status == 401, text
    assert "source address" in text
    gateway = f"{str(urlsplit(vnp_url).hostname).rsplit('.', 1)[0]}.1"
    assert gateway in text
    logged = log.read_text()[seen:]
    assert "source address" in logged and gateway in logged
