#!/usr/bin/env bash
# The main job, on a fresh Debian machine as root: install vnet, bring up the
# local lab, instantiate the paper's Figure 6 VNet, show its nodes reaching each
# other, and print the timing breakdown. Leaves the lab and the VNet running;
# `.venv/bin/vnet lab down` removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
vnet=.venv/bin/vnet

$vnet lab up
out=$(mktemp)
trap 'rm -f "$out"' EXIT
$vnet up examples/figure6.xml --json | tee "$out"
id=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["vnet"])' "$out")

echo
echo "== pings between adjacent virtual nodes of $id =="
.venv/bin/python - "$id" examples/figure6.xml <<'PY'
import subprocess, sys
from vnetlib.spec import load_vnet
vnet, spec = sys.argv[1], load_vnet(sys.argv[2])
failed = 0
for link in spec.links:
    peer = link.b.interface.addresses[0].split("/")[0]
    done = subprocess.run([".venv/bin/vnet", "exec", vnet, link.a.node, "--",
                           "ping", "-c", "1", "-W", "2", peer], capture_output=True, text=True)
    ok = done.returncode == 0
    failed += not ok
    rtt = done.stdout.split("time=")[1].split()[0] + " ms" if ok else "FAILED"
    print(f"  {link.id}: {link.a.node} -> {link.b.node} ({peer}): {rtt}")
sys.exit(1 if failed else 0)
PY
echo
echo "== timing breakdown =="
$vnet status "$id" --json | .venv/bin/python -c '
import json, sys
t = json.load(sys.stdin)["timings"]
for phase, secs in t.items():
    print(f"  {phase:8s} {secs:8.3f} s")
print(f"  {\"total\":8s} {sum(t.values()):8.3f} s")'
echo
echo "Explore: $vnet status $id; $vnet exec $id r1 -- ip addr"
echo "Clean up: $vnet down $id; $vnet lab down"
