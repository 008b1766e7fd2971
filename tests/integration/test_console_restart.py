"""A console session and the players around it, each player its own `vnet
serve` process: a restart of a PIP that is not on the session's path leaves
the session working; stopping a player on its path ends it with a message,
and the client exits."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.integration.players_fixtures import Substrates, namespaces
from vnetlib import paths
from vnetlib.console.relay import STOP_NOTICE
from vnetlib.lab import manage
from vnetlib.players import cgroups
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient
from vnetlib.players.config import PipSection, PlayerConfig, Upstream, VnoSection, VnpSection, dump
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet

ROOT = Path(__file__).resolve().parents[2]
SERVE = ("import argparse, sys\n"
         "from vnetlib.cli import serve\n"
         "parser = argparse.ArgumentParser(); serve.add_parser(parser.add_subparsers())\n"
         "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n")
CLIENT = """
import asyncio, sys
from pathlib import Path
from vnetlib.console.client import run_console
from vnetlib.players.pki import Credentials
from vnetlib.players.sp import ServiceProvider
url, cert, key, ca, vnet, node = sys.argv[1:7]
sp = ServiceProvider(url, Credentials(Path(cert), Path(key), Path(ca)), vno_name="vno-r")
print("ended:", asyncio.run(run_console(sp, vnet, node, linger=600.0)), flush=True)
"""
# n1 lands on PIP 1 (berlin), n2 on PIP 2 (paris): both PIPs hold a part of the VNet.
TWO_PIPS = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="restart">
  <node id="n1" location="berlin"/><node id="n2" location="paris"/>
</vnet>"""


@dataclass
class Served:
    """Players as processes, stopped by pid at the end."""

    ca: LabCA
    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)

    def start(self, config: PlayerConfig) -> str:
        path, ready = self.root / f"{config.name}.toml", self.root / f"{config.name}.ready"
        path.write_text(dump(config))
        ready.unlink(missing_ok=True)
        log = (self.root / f"{config.name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--role",
                                 config.role.value, "--config", str(path), "--ready-file",
                                 str(ready)], stdout=log, stderr=log, cwd=ROOT)
        log.close()
        self.procs[config.name], self.configs[config.name] = proc, path
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), (self.root / f"{config.name}.log").read_text()[-2000:]
        self.urls[config.name] = ready.read_text().strip()
        return self.urls[config.name]

    def config(self, name: str, role: Role, **sections: object) -> PlayerConfig:
        creds = self.ca.export(name, role, self.root / name)
        return PlayerConfig(name=name, role=role, store=f"sqlite:///{self.root / name}.db",
                            pki=creds.cert_path.parent, **sections)  # type: ignore[arg-type]

    def stop(self, name: str) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(30)

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def pip_section(substrate: str) -> PipSection:
    return PipSection(substrate=str(paths.substrate_dir(substrate) / "substrate.xml"),
                      inventory=str(manage.inventory_path(substrate)))


@pytest.fixture
def served(lab_ca: LabCA, tmp_path: Path, substrates: Substrates) -> Iterator[Served]:
    s = Served(lab_ca, tmp_path)
    try:
        yield s
    finally:
        s.stop_all()
        for pip in ("pip-r1", "pip-r2"):  # the shells of the VNet the test left
            cgroups.clear(cgroups.service_parent(pip))
        for name in (substrates.a, substrates.b):
            for ns in namespaces(f"vn-{name}-"):
                subprocess.run(["ip", "netns", "delete", ns], check=False)


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    fd, got, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout} s: {got[-500:]!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"client ended before {marker!r}: {got[-500:]!r}")
        got += chunk
    return got


def test_session_survives_a_restart_off_its_path_and_ends_with_a_message_on_it(
        served: Served, substrates: Substrates, lab_ca: LabCA) -> None:
    served.start(served.config("pip-r1", Role.PIP, pip=pip_section(substrates.a)))
    pip2 = served.config("pip-r2", Role.PIP, pip=pip_section(substrates.b))
    pip2_url = served.start(pip2)
    ups = tuple(Upstream(n, served.urls[n]) for n in ("pip-r1", "pip-r2"))
    served.start(served.config("vnp-r", Role.VNP, vnp=VnpSection(ups, 20.0)))
    served.start(served.config("vno-r", Role.VNO,
                               vno=VnoSection(Upstream("vnp-r", served.urls["vnp-r"]))))
    sp_creds = lab_ca.issue("sp-r", Role.SP)
    sp = ServiceProvider(served.urls["vno-r"], sp_creds, 120.0, vno_name="vno-r")
    view = sp.request_vnet(parse_vnet(TWO_PIPS))
    assert view.status == "ready"

    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, served.urls["vno-r"], str(sp_creds.cert_path),
         str(sp_creds.key_path), str(sp_creds.ca_path), view.id, "n1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        assert client.stdin is not None
        client.stdin.write(b"echo first-$((20+1))\n")
        client.stdin.flush()
        read_until(client, b"first-21", 20)

        # PIP 2 holds n2 of this VNet but is not on n1's console path: restart it.
        old_pid = served.procs["pip-r2"].pid
        assert served.stop("pip-r2") == 0
        served.start(replace(pip2, listen=pip2_url.split("//")[1]))
        assert served.procs["pip-r2"].pid != old_pid
        back = PlayerClient(pip2_url, lab_ca.issue("vnp-r", Role.VNP), expect_name="pip-r2")
        assert m.read(back.get("/v1/version").body, "version").get("role") == "pip"

        client.stdin.write(b"echo second-$((40+2))\n")
        client.stdin.flush()
        read_until(client, b"second-42", 10)
        assert client.poll() is None

        # The VNP is on the path: stopping it ends the session with a message.
        start = time.monotonic()
        assert served.stop("vnp-r") == 0
        out = read_until(client, STOP_NOTICE.strip(), 20)
        assert client.wait(20) == 0
        rest = client.stdout.read() if client.stdout is not None else b""
        print(f"\nsession ended {time.monotonic() - start:.2f} s after SIGTERM to the VNP: "
              f"{(out + rest).decode(errors='replace').strip().splitlines()[-2:]}")
        assert b"ended: closed by the remote side" in out + rest
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
