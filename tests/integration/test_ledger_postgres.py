"""Two PIP processes sharing one PostgreSQL ledger never double-book: not the
substrate's capacity, not a tunnel id, not a sliver's transition."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import spec_of
from vnetlib.core.records import State
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.placement import residual_substrate

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys
from vnetlib.core.deployer import RecordingDeployer
from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import spec_of
from vnetlib.core.pip import CoreError, PipCore, Pricing
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.spec import parse_vnet

url, name, who, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
substrate = substrate_of(LabConfig(name=name, hosts=2, cpu=4.0))
rec = RecordingDeployer(delay=0.05)
core = PipCore(substrate, Ledger(url, name), rec, Pricing(1.0, 0.0, 600.0))
spec = parse_vnet(b'''<vnet xmlns="urn:vnet:rdl:1" version="1" name="t">
  <node id="a" cpu="1"/><node id="b" cpu="1"/>
  <link id="ab"><endpoint node="a" interface="e0"/><endpoint node="b" interface="e0"/></link>
</vnet>''')
got = {"allocated": 0, "refused": 0, "provisioned": 0, "busy": 0}
for i in range(count):
    try:
        core.allocate(who, f"s{i}", spec)
        got["allocated"] += 1
    except CoreError:
        got["refused"] += 1
# both processes race to provision every sliver of the first one
for i in range(count):
    try:
        core.provision("w0", f"s{i}")
        got["provisioned"] += 1
    except CoreError:
        got["busy"] += 1
got["deployments"] = sum(1 for _, state in rec.runs if state == "present")
print(json.dumps(got))
"""


def test_two_processes_on_one_postgres_never_double_book(postgres_url: str) -> None:
    name = f"pg{secrets.token_hex(2)}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, name, f"w{i}", "6"],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(2)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    ledger = Ledger(postgres_url, name)
    try:
        live = ledger.slivers()
        # 2 hosts x 4 CPUs, 2 CPUs per sliver: exactly 4 fit, whoever asked
        assert sum(r["allocated"] for r in results) == len(live) == 4
        residual = residual_substrate(
            substrate_of(LabConfig(name=name, hosts=2, cpu=4.0)),
            [(spec_of(s.spec_xml), s.embedding.to_dict()) for s in live])
        assert all(h.cpu >= 0 for h in residual.hosts)
        # every sliver of w0 deployed exactly once, though both processes provisioned it
        w0 = [s for s in live if s.owner == "w0"]
        assert w0 and all(s.state is State.READY for s in w0)
        assert sum(r["deployments"] for r in results) == len(w0)
        vnis = [v for s in live for v in ledger.vnis_of(s.id).values()]
        assert len(vnis) == len(set(vnis))
    finally:
        ledger.forget()
        ledger.close()
