"""Figure 6 through a PIP's GENI AM API v3 (geni-lib's client) against the same
steps through our own API (`/v1/slivers`), on one lab substrate.

    .venv/bin/python -m bench.geni [--runs 3] [--hosts 3]

Builds a substrate (namespaces), a CA and one PIP management node in this
process (AM API mounted), then per run: Allocate, Provision, Status, one node
(r1) stopped with PerformOperationalAction, Delete, each timed, through geni-lib, and
allocate, provision, delete through our XML API. Prints medians in seconds.
Needs root; removes everything it made.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from geni.minigcf import amapi3  # type: ignore[import-untyped]
from geni.minigcf import util as geni_util
from vnetlib import paths
from vnetlib.geni import am, urns
from vnetlib.geni.rspec import request_rspec
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient
from vnetlib.players.config import PipSection, PlayerConfig
from vnetlib.players.node import ManagementNode
from vnetlib.players.pip import PipService
from vnetlib.players.pki import LabCA, Role
from vnetlib.spec import load_vnet

FIGURE6 = Path(__file__).resolve().parents[2] / "examples" / "figure6.xml"
STEPS_GENI = ("Allocate", "Provision", "Status", "PerformOperationalAction", "Delete")
STEPS_OURS = ("allocate", "provision", "delete")


@dataclass(frozen=True)
class Cred:
    path: str
    type: str = "geni_sfa"
    version: str = "3"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def check(result: dict[str, Any]) -> None:
    if result["code"]["geni_code"] != 0:
        raise RuntimeError(f"GENI call failed: {result}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.geni")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vnet-bench-geni-"))
    os.environ["VNET_HOME"] = str(home)
    sub = f"g{secrets.token_hex(2)}"
    net = 200 + secrets.randbelow(40)
    manage.up(LabConfig(name=sub, hosts=args.hosts, data_network=f"198.18.{net}.0/24",
                        mgmt_network=f"198.19.{net}.0/24", locations=("berlin",)))
    node: ManagementNode | None = None
    try:
        ca = LabCA.create(home / "ca", "bench geni")
        pip_creds = ca.issue("pip-bench", Role.PIP)
        config = replace(PlayerConfig(name="pip-bench", role=Role.PIP,
                                      store=f"sqlite:///{home / 'pip.db'}", pki=ca.directory),
                         pip=PipSection(str(paths.substrate_dir(sub) / "substrate.xml"),
                                        str(manage.inventory_path(sub))))
        node = ManagementNode(config, pip_creds)
        assert isinstance(node.service, PipService)
        node.start()
        url = node.url + am.ROUTE
        vnp = ca.issue("bench-vnp", Role.VNP)  # the AM API serves VNPs by default
        cred = home / "slice.cred"
        cred.write_text("<signed-credential><credential/></signed-credential>")
        tls, bundle, creds = (str(vnp.cert_path), str(vnp.key_path)), str(vnp.ca_path), [
            Cred(str(cred))]
        spec = load_vnet(FIGURE6)
        rspec = request_rspec(spec).decode()
        geni: dict[str, list[float]] = {s: [] for s in STEPS_GENI}
        ours: dict[str, list[float]] = {s: [] for s in STEPS_OURS}
        own = PlayerClient(node.url, vnp, 300.0)

        def one(run: int) -> None:
            slice_urn = urns.slice_urn(f"bench{run}")
            cred_arg = [{"geni_type": "geni_sfa", "geni_version": "3",
                         "geni_value": cred.read_text()}]
            seconds, result = timed(lambda: amapi3.allocate(url, bundle, *tls, creds,
                                                            slice_urn, rspec, {}))
            check(result)
            geni["Allocate"].append(seconds)
            r1 = next(s["geni_sliver_urn"] for s in result["value"]["geni_slivers"]
                      if s["vnet_node"] == "r1")
            calls: dict[str, Callable[[], Any]] = {
                "Provision": lambda: amapi3.provision(url, bundle, *tls, creds, slice_urn, {}),
                "Status": lambda: geni_util._rpcpost(url, xmlrpc.client.dumps(
                    ([slice_urn], cred_arg, {}), methodname="Status"), tls, bundle),
                "PerformOperationalAction": lambda: amapi3.poa(url, bundle, *tls, creds, [r1],
                                                               "geni_stop", {}),
                "Delete": lambda: amapi3.delete(url, bundle, *tls, creds, slice_urn, {}),
            }
            for step, call in calls.items():
                seconds, result = timed(call)
                check(result)
                geni[step].append(seconds)
            name = f"own{run}"
            alloc = m.allocate_xml(m.Allocate(spec, None, 60.0))
            prov = m.provision_xml(m.Provision(()))
            ours["allocate"].append(timed(lambda: own.put(f"/v1/slivers/{name}", alloc))[0])
            ours["provision"].append(timed(
                lambda: own.post(f"/v1/slivers/{name}/provision", prov))[0])
            ours["delete"].append(timed(lambda: own.delete(f"/v1/slivers/{name}"))[0])
            print(f"run {run + 1}/{args.runs}: GENI "
                  + ", ".join(f"{k} {v[-1]:.2f}" for k, v in geni.items())
                  + "; ours " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ours.items()),
                  flush=True)

        for run in range(args.runs):
            one(run)
        print(f"\nFigure 6 on {args.hosts} hosts, {args.runs} runs, median seconds "
              f"(load average {os.getloadavg()[0]:.2f}):")
        for step, values in geni.items():
            print(f"  GENI {step:<26} {statistics.median(values):7.3f}")
        for step, values in ours.items():
            print(f"  /v1/slivers {step:<19} {statistics.median(values):7.3f}")
    finally:
        try:
            if node is not None:
                node.stop()
            manage.down(sub)
        finally:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
