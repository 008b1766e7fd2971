"""Where the time of taking one pool VM goes: vnet.infra.vnet_domain run
through ansible-playbook on localhost, booting a pool VM (with the pool's
pre-wired NICs, their taps in a throwaway namespace), then taking it for a
node with three NICs on bridges of that namespace (as figure6-vm's r1). The
module reports its own steps (define, ip = the taps renamed, spares deleted,
moved onto bridges, configure = vnet-config on the serial console, beside
the ip steps); the rest of the playbook's wall time is Ansible."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ansible_runner

from vnetlib.core.pool import NICS, pool_tap
from vnetlib.vm.image import build_image, kernel_cmdline, mac_for

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"


def _collections(base: Path) -> Path:
    infra = base / "ansible_collections" / "vnet" / "infra"
    infra.mkdir(parents=True)
    for part in ("galaxy.yml", "meta", "plugins"):
        (infra / part).symlink_to(ROOT / part)
    return base


def _module(work: Path, collections: Path, args: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(wall seconds of the ansible-playbook run, the module's result)."""
    play = work / "play.yml"
    play.write_text(json.dumps([{"hosts": "all", "gather_facts": False,
                                 "tasks": [{"vnet.infra.vnet_domain": args}]}]))
    inventory = work / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local "
                         f"ansible_python_interpreter={sys.executable}\n")
    (work / "runner").mkdir(exist_ok=True)
    started = time.perf_counter()
    runner = ansible_runner.run(
        private_data_dir=str(work / "runner"), playbook=str(play), inventory=str(inventory),
        envvars={"ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1",
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        quiet=True, timeout=300)
    took = time.perf_counter() - started
    for event in runner.events:
        if event.get("event") == "runner_on_failed":
            raise RuntimeError(json.dumps(event["event_data"]["res"])[-2000:])
        if event.get("event") == "runner_on_ok":
            return took, dict(event["event_data"]["res"])
    raise RuntimeError("the module gave no result")


def take_breakdown() -> dict[str, float]:
    """Seconds per part of one take (and of the pool VM's boot before it)."""
    image = build_image()
    tag = "vb" + secrets.token_hex(3)
    netns, name = f"{tag}-h1", f"vn-{tag}-pool-0"
    nics = [(f"{tag}t{i}", mac_for(tag, "r1", f"eth{i}"), f"br{i}") for i in range(3)]
    base = {"name": name, "uri": URI, "accel": "tcg", "memory_mb": 128, "pool": True,
            "kernel": str(image.kernel), "initrd": str(image.initrd), "state": "running"}
    with tempfile.TemporaryDirectory(prefix="vnet-bench-take-") as tmp:
        work = Path(tmp)
        collections = _collections(work / "collections")
        try:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            for _, _, bridge in nics:
                for cmd in (["link", "add", bridge, "type", "bridge"],
                            ["link", "set", bridge, "up"]):
                    subprocess.run(["ip", "-n", netns, *cmd], check=True)
            boot, _ = _module(work, collections, {
                **base, "cmdline": kernel_cmdline(image, "pool", [], False), "netns": netns,
                "ready_marker": "vnet-guest-ready pool",
                "interfaces": [{"tap": pool_tap(name, i), "mac": mac_for(name, "pool", f"eth{i}")}
                               for i in range(NICS)]})
            line = kernel_cmdline(image, "r1", [(mac, [f"198.19.{i}.1/30"])
                                                for i, (_, mac, _) in enumerate(nics)], True)
            take, result = _module(work, collections, {
                **base, "cmdline": line, "netns": netns, "ready_marker": "vnet-guest-ready r1",
                "interfaces": [{"tap": t, "mac": m, "bridge": b} for t, m, b in nics]})
        finally:
            subprocess.run(["virsh", "-q", "-c", URI, "destroy", name], capture_output=True)
            subprocess.run(["virsh", "-q", "-c", URI, "undefine", name], capture_output=True)
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
            for tap in [t for t, _, _ in nics] + [pool_tap(name, i) for i in range(NICS)]:
                subprocess.run(["ip", "link", "delete", tap], capture_output=True)
    steps = {k: float(v) for k, v in result["timings"].items()}
    # configure runs beside the last ip batch: their overlap counts once
    inside = sum(steps.values()) - min(steps.get("configure", 0.0), steps.get("ip", 0.0))
    return {"boot a pool VM (playbook)": boot, "take (playbook)": take,
            **{f"take: {k}": v for k, v in steps.items()},
            "take: Ansible and module start (at most)": take - inside}
