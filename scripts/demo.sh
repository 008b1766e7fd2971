#!/usr/bin/env bash
# The main job, on a fresh Debian machine as root: install vnet, bring up the
# local lab (two PIPs, a VNP and a VNO as separate processes), then
#  1. instantiate the paper's Figure 6 VNet directly on a PIP's substrate (a
#     second lab without players) and print the per-phase timing breakdown
#     (parse, embed, plan, deploy);
#  2. request the same topology, spread over Berlin (PIP 1) and London (PIP 2),
#     from the lab's VNO: SP -> VNO -> VNP -> PIPs, with inter-PIP links;
# and show, for both, every pair of adjacent virtual nodes reaching each other.
# Leaves everything running; `vnet lab down` and `vnet lab down --name solo`
# remove it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
vnet=.venv/bin/vnet
py=.venv/bin/python

$vnet lab up                                        # two PIPs, a VNP, a VNO
$vnet lab up --name solo --pips 1 --no-players --mgmt-offset 8   # a PIP's own substrate
echo

pings() {  # VNET SPEC [--lab LAB]: ping across every link of SPEC, both ways
    $py - "$@" <<'PY'
import json, subprocess, sys
from vnetlib.spec import load_vnet
vnet, spec, extra = sys.argv[1], load_vnet(sys.argv[2]), sys.argv[3:]
failed = 0
for link in spec.links:
    for src, dst in ((link.a, link.b), (link.b, link.a)):
        peer = dst.interface.addresses[0].split("/")[0]
        out = subprocess.run([".venv/bin/vnet", "exec", "--json", *extra, vnet, src.node, "--",
                              "ping", "-c", "1", "-W", "2", peer], capture_output=True, text=True)
        result = json.loads(out.stdout) if out.stdout else {"rc": out.returncode, "stdout": ""}
        ok = result["rc"] == 0
        failed += not ok
        rtt = result["stdout"].split("time=")[1].split()[0] + " ms" if ok else "FAILED"
        print(f"  {link.id}: {src.node:2s} -> {dst.node:2s} ({peer:12s}) {rtt}")
sys.exit(1 if failed else 0)
PY
}

report() {  # the JSON of `vnet up`: where the nodes went and how long each phase took
    $py - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
if "node_map" in r:
    placed = ", ".join(f"{n}@{h}" for n, h in sorted(r["node_map"].items()))
else:
    placed = f"status {r['status']}, price {r['price']}, nodes {' '.join(r['nodes'])}"
print(f"VNet {r['vnet']}: {placed}")
for phase, secs in r["timings"].items():
    print(f"  {phase:8s} {secs:8.3f} s")
print(f"  {'total':8s} {r['total']:8.3f} s")
PY
}

echo "== 1. examples/figure6.xml instantiated directly by a PIP (substrate solop1) =="
out=$($vnet up examples/figure6.xml --substrate solop1 --json)
id=$($py -c 'import json,sys; print(json.loads(sys.argv[1])["vnet"])' "$out")
report "$out"
pings "$id" examples/figure6.xml
echo

echo "== 2. examples/figure6-2pip.xml through the players, across two PIPs =="
out=$($vnet up examples/figure6-2pip.xml --json)
id2=$($py -c 'import json,sys; print(json.loads(sys.argv[1])["vnet"])' "$out")
report "$out"
pings "$id2" examples/figure6-2pip.xml --lab lab
echo

echo "Explore: $vnet status; $vnet exec $id r1 -- ip addr; $vnet lab status"
echo "Clean up: $vnet lab down; $vnet lab down --name solo"
