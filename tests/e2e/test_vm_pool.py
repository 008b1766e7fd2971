"""The pool of booted VMs on a real lab (direct path, TCG guests).

- figure6-vm from a pool sized to where its routers land: every router takes
  a pool VM that was running before (same QEMU process, no boot), the VNet
  pings across every link both ways; a taken VM whose QEMU is killed from
  outside shows stopped and `ctl start` boots it as its node (its definition
  is the node's now); down destroys the taken VMs and refills the pool;
- then concurrent `vnet up`s (separate processes) with fewer pool VMs than
  VM nodes: each pool VM taken once, the rest booted on demand, all ping;
  drain and lab down leave no domain.
One lab and one test: every pool boot costs seconds of TCG. (A ready pool VM
killed from outside: test_vm_pool_faults.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab
from vnetlib import naming
from vnetlib.instantiate import local_core
from vnetlib.spec import load_vnet
from vnetlib.vm import serial

FIGURE6_VM = EXAMPLES / "figure6-vm.xml"
SPEC = load_vnet(FIGURE6_VM)
QEMU = b"qemu-system-x86_64"

pytestmark = pytest.mark.skipif(
    not (shutil.which("virsh") and shutil.which("qemu-system-x86_64") and shutil.which("libvirtd")),
    reason="libvirt and QEMU are not installed (scripts/install.sh --test installs them)",
)


def qemu_pids(prefix: str) -> dict[str, int]:
    """Domain name -> pid of each QEMU process running a domain named `prefix`*."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(QEMU):
            for a in argv:
                if a.startswith(b"guest=" + prefix.encode()):
                    found[a.decode().removeprefix("guest=").split(",")[0]] = int(
                        cmdline.parent.name)
    return found


def listed(prefix: str) -> set[str]:
    done = subprocess.run(["virsh", "-c", serial.URI, "list", "--all", "--name"],
                          capture_output=True, text=True, check=False)
    return {d for d in done.stdout.split() if d.startswith(prefix)}


def pool(vnet: Vnet, lab: Lab, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = vnet.json("pool", *args, "--substrate", lab.substrate)
    return out


def unreached(vnet: Vnet, vnet_id: str, node: str, addresses: list[str]) -> list[str]:
    """Of `addresses`, those `node` does not reach, asked in one `vnet exec`
    (for a VM node that took a pool VM, exec finds it under the pool domain)."""
    script = ("for a in " + " ".join(addresses) + "; do if ping -c 1 -W 2 $a >/dev/null 2>&1;"
              " then echo ok $a; else echo no $a; fi; done")
    done = vnet.run("exec", vnet_id, node, "--", "sh", "-c", script, check=False)
    reached = {line.split()[1] for line in done.stdout.replace("\r", "").splitlines()
               if line.startswith("ok ")}
    return [a for a in addresses if a not in reached]


def unreached_within(vnet: Vnet, vnet_id: str, node: str, addresses: list[str],
                     seconds: float = 10.0) -> list[str]:
    """`unreached`, asked again for what is left until `seconds` passed (a
    guest's first ARP, a router's first route)."""
    deadline = time.monotonic() + seconds
    while True:
        addresses = unreached(vnet, vnet_id, node, addresses)
        if not addresses or time.monotonic() > deadline:
            return addresses


def every_link_pings(vnet: Vnet, vnet_id: str, spec: Any) -> None:
    """Each node pings its neighbours' ends, both ways on every link; the
    nodes in parallel, a node retried for up to 10 s (a guest's first ARP)."""
    wanted: dict[str, list[str]] = {}
    for link in spec.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            wanted.setdefault(src.node, []).append(dst.interface.addresses[0].split("/")[0])

    def check(node: str) -> list[str]:
        return [f"{node} -> {a}" for a in unreached_within(vnet, vnet_id, node, wanted[node])]

    with ThreadPoolExecutor(len(wanted)) as ex:
        failed = [f for found in ex.map(check, sorted(wanted)) for f in found]
    assert not failed, f"{vnet_id}: unreachable: {failed}"


@pytest.fixture
def lab(vnet: Vnet) -> Any:
    made = new_lab(vnet, "--pips", "1", "--hosts", "2", "--no-players")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)
        prefix = naming.vnode_netns_prefix(made.substrate)
        assert not listed(prefix) and not qemu_pids(prefix), "lab down left pool domains"


def test_figure6_vm_from_the_pool_refills_and_replaces(vnet: Vnet, lab: Lab,
                                                      tmp_path: Path) -> None:
    prefix = naming.vnode_netns(lab.substrate, "pool", "")
    # Where the routers land: the plan (no deployment), as the pool will see it.
    where = vnet.json("plan", str(FIGURE6_VM), "--substrate", lab.substrate,
                      "-o", str(tmp_path / "plan.yml"))
    wanted = Counter(where["node_map"][n.id] for n in SPEC.nodes if n.kind.is_vm)
    sizes = ",".join(f"{h}={k}" for h, k in sorted(wanted.items()))
    filled = pool(vnet, lab, "fill", "--size", sizes)
    assert Counter(vm["host"] for vm in filled["vms"] if vm["state"] == "ready") == wanted
    before = qemu_pids(prefix)
    assert len(before) == 4

    up = vnet.json("up", str(FIGURE6_VM), "--substrate", lab.substrate)
    vnet_id = up["vnet"]
    print(f"figure6-vm from the pool: {up['timings']}")
    status = vnet.json("status", vnet_id)
    assert set(status["domains"]) == {"r1", "r2", "r3", "r4"}
    assert set(status["domains"].values()) == set(before), "every router took a pool VM"
    assert qemu_pids(prefix) == before, "a taken pool VM was restarted"
    rows = {vm["domain"]: vm for vm in pool(vnet, lab, "status")["vms"]}
    for node, domain in status["domains"].items():
        assert (rows[domain]["state"], rows[domain]["sliver"], rows[domain]["vnode"]) == (
            "taken", vnet_id, node)
    every_link_pings(vnet, vnet_id, SPEC)

    # A taken VM's QEMU killed from outside: status finds the pool domain the
    # node took and says so; started again, it boots as the node (its
    # definition is the node's now) and answers on its links.
    r4 = status["domains"]["r4"]
    os.kill(before[r4], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while r4 in qemu_pids(prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vnet.json("status", vnet_id)["observed"]["r4"] in ("stopped", "crashed")
    vnet.run("ctl", vnet_id, "r4", "start")
    assert vnet.json("status", vnet_id)["observed"]["r4"] == "running"
    assert not unreached_within(vnet, vnet_id, "r4", ["198.19.0.17"]), \
        "r4 -> r2 after a restart"

    # The teardown destroys the taken VMs and boots the pool up to its size
    # (made 2 first, for the part below, without a boot: the ledger's setting).
    host = sorted(wanted)[0]
    core = local_core(lab.substrate)
    try:
        core.pool.configure(replace(core.pool.settings(), sizes={host: 2}))
    finally:
        core.ledger.close()
    vnet.run("down", vnet_id)
    after = pool(vnet, lab, "status")["vms"]
    assert not set(before) & listed(prefix), "taken pool VMs outlived the teardown"
    assert Counter(vm["host"] for vm in after if vm["state"] == "ready") == {host: 2}, \
        "teardown did not refill the pool"
    made = {vm["domain"] for vm in after}
    assert made <= set(qemu_pids(prefix)) and listed(prefix) == made

    # Fewer pool VMs than VM nodes, three `vnet up` processes at once.
    specs = [one_vm_spec(tmp_path, i) for i in range(3)]
    with ThreadPoolExecutor(len(specs)) as ex:
        ups = list(ex.map(lambda p: vnet.json("up", str(p), "--substrate", lab.substrate),
                          specs))
    domains = [vnet.json("status", u["vnet"])["domains"]["v"] for u in ups]
    assert len(set(domains)) == 3, f"a domain serves two VNets: {domains}"
    from_pool = [d for d in domains if d in made]
    assert from_pool and len(from_pool) < 3, (domains, made)
    rows = {vm["domain"]: vm for vm in pool(vnet, lab, "status")["vms"]}
    taken = sorted(d for d, vm in rows.items() if vm["state"] == "taken")
    assert taken == sorted(from_pool)
    with ThreadPoolExecutor(len(ups)) as ex:
        list(ex.map(lambda us: every_link_pings(vnet, us[0]["vnet"], load_vnet(us[1])),
                    zip(ups, specs, strict=True)))

    drained = pool(vnet, lab, "drain")  # size 0 first: a down then refills nothing
    assert [vm["state"] for vm in drained["vms"]] == ["taken"] * len(from_pool)
    vnet.run("down", ups[0]["vnet"])
    assert listed(prefix) == set(from_pool) - {domains[0]}, "a down after drain refilled"
    # The other two VNets go with the lab (its fixture checks no domain is left).


def one_vm_spec(tmp: Path, i: int) -> Path:
    path = tmp / f"pair{i}.xml"
    path.write_text(f"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="pair{i}">
  <node id="v" kind="vm" hypervisor="qemu" cpu="1" memory="128"/><node id="n"/>
  <link id="vn"><endpoint node="v" interface="eth0"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="n" interface="eth0"><address>198.19.0.2/30</address></endpoint></link>
</vnet>""")
    return path
