"""`vnet serve`: a management node as its own process, ready file, clean SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.integration.players_fixtures import Substrates
from vnetlib import paths
from vnetlib.lab import manage
from vnetlib.players import messages as m
from vnetlib.players.client import ClientError, PlayerClient, RemoteError
from vnetlib.players.config import Faults, PipSection, PlayerConfig, dump
from vnetlib.players.pki import LabCA, Role
from vnetlib.spec import parse_vnet

SERVE = ("import argparse, sys\n"
         "from vnetlib.cli import serve\n"
         "parser = argparse.ArgumentParser(); serve.add_parser(parser.add_subparsers())\n"
         "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n")


def test_serve_writes_ready_file_answers_and_stops_on_sigterm(
        lab_ca: LabCA, tmp_path: Path, substrates: Substrates) -> None:
    config = PlayerConfig(name="pip-serve", role=Role.PIP,
                          store=f"sqlite:///{tmp_path / 'pip.db'}",
                          pki=lab_ca.export("pip-serve", Role.PIP,
                                            tmp_path / "creds").cert_path.parent,
                          pip=PipSection(
                              substrate=str(paths.substrate_dir(substrates.a) / "substrate.xml"),
                              inventory=str(manage.inventory_path(substrates.a))),
                          faults=Faults(stall_at="quote", stall_seconds=300))
    path, ready = tmp_path / "pip.toml", tmp_path / "ready"
    path.write_text(dump(config))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--role", "pip", "--config",
                             str(path), "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), proc.stderr.read() if proc.stderr else ""
        url = ready.read_text().strip()
        client = PlayerClient(url, lab_ca.issue("vnp-serve", Role.VNP), expect_name="pip-serve")
        version = m.read(client.get("/v1/version").body, "version")
        assert version.get("role") == "pip" and version.get("api") == "v1"
        ad = m.advertisement_from(m.read(client.get("/v1/advertisement").body, "advertisement"))
        assert {s.location for s in ad.sites} == {"berlin", "london"}
        # a stalled request does not hold up SIGTERM: it is told to give up
        answers: list[BaseException] = []

        def stalled_quote() -> None:
            try:
                client.post("/v1/quotes", m.quote_request_xml(m.QuoteRequest(parse_vnet(
                    b'<vnet xmlns="urn:vnet:rdl:1" version="1" name="q"><node id="x"/></vnet>'))))
            except ClientError as exc:
                answers.append(exc)

        waiter = threading.Thread(target=stalled_quote)
        waiter.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        waiter.join(10)
        assert isinstance(answers[0], RemoteError) and answers[0].status == 503
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
