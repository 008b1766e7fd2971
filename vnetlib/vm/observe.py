"""What libvirt reports of VM nodes, for `vnet status`: a domain that a qemu
process killed from outside left shut off shows as such, next to the run
state the ledger wants (`vnet ctl VNET NODE start` converges it back)."""

from __future__ import annotations

import shutil
import subprocess

URI = "qemu:///system"
STATES = {"running": "running", "paused": "paused", "shut off": "stopped",
          "crashed": "crashed", "in shutdown": "stopping", "idle": "running",
          "pmsuspended": "paused"}


def domain_states(names: list[str]) -> dict[str, str]:
    """The run state libvirt reports for each named domain ("absent" when it
    has none of that name, "unknown" when libvirt cannot be asked)."""
    if not names:
        return {}
    if shutil.which("virsh") is None:
        return dict.fromkeys(names, "unknown")
    done = subprocess.run(["virsh", "-q", "-c", URI, "list", "--all"], capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode != 0:
        return dict.fromkeys(names, "unknown")
    seen: dict[str, str] = {}
    for line in done.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            seen[parts[1]] = STATES.get(parts[2].strip(), parts[2].strip())
    return {n: seen.get(n, "absent") for n in names}
