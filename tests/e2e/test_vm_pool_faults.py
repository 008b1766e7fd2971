"""Faults of the pool of booted VMs on a real lab (direct path, TCG guests):

- a ready pool VM killed from outside (SIGKILL of its QEMU) is destroyed by
  the next round, its pre-wired taps with it, and a new one is booted;
- a take that fails after the VM was taken over (the deployment fails after
  the module took the pool VM: NICs renamed, guest reconfigured) is rolled
  back: the sliver ends failed with nothing deployed, the VM, its row and
  every tap it had are gone, and the next round boots a replacement.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import Lab, Vnet, new_lab
from tests.e2e.test_vm_pool import listed, one_vm_spec, qemu_pids
from vnetlib import naming
from vnetlib.core.deployer import Deployer
from vnetlib.core.pip import DeployFailed
from vnetlib.core.pool import READY, PoolSettings, pool_tap
from vnetlib.deploy.ansible import DeployError, Progress, TaskFailure
from vnetlib.instantiate import OPERATOR, local_core
from vnetlib.spec import load_vnet

pytestmark = pytest.mark.skipif(
    not (shutil.which("virsh") and shutil.which("qemu-system-x86_64") and shutil.which("libvirtd")),
    reason="libvirt and QEMU are not installed (scripts/install.sh --test installs them)",
)


@dataclass
class FailAfterPresent:
    """The real deployer, whose deployments fail once they are done."""

    inner: Deployer

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        self.inner.apply(plan, state, check=check, progress=progress)
        if state == "present" and plan.get("vnet") != "pool" and not check:
            raise DeployError("failed", [TaskFailure(h, "injected", None, "after the take")
                                         for h in plan["hosts"]], "")


def taps(netns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "tun"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


@pytest.fixture
def lab(vnet: Vnet) -> Iterator[Lab]:
    made = new_lab(vnet, "--pips", "1", "--hosts", "1", "--no-players")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)
        prefix = naming.vnode_netns_prefix(made.substrate)
        assert not listed(prefix) and not qemu_pids(prefix), "lab down left pool domains"


def test_a_killed_pool_vm_is_replaced_and_a_failed_take_rolled_back(
        lab: Lab, tmp_path: Any) -> None:
    core = local_core(lab.substrate)
    (host,) = core.pool.hosts
    netns = naming.host_netns(lab.substrate, host)
    prefix = naming.vnode_netns(lab.substrate, "pool", "")
    try:
        core.pool.configure(PoolSettings({"*": 1}, nics=2))
        assert any(line.startswith("booted") for line in core.pool.tend())
        (first,) = [vm.domain for vm in core.pool.vms() if vm.state == READY]
        assert taps(netns) == {pool_tap(first, 0), pool_tap(first, 1)}

        os.kill(qemu_pids(prefix)[first], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while first in qemu_pids(prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        done = core.pool.tend()
        assert any(line.startswith(f"destroyed {first}") for line in done), done
        (second,) = [vm.domain for vm in core.pool.vms() if vm.state == READY]
        assert second != first and first not in listed(prefix)
        assert second in qemu_pids(prefix)
        assert taps(netns) == {pool_tap(second, 0), pool_tap(second, 1)}, \
            "the dead VM's taps outlived it"

        failing = local_core(lab.substrate, FailAfterPresent(core.deployer))
        spec = load_vnet(one_vm_spec(tmp_path, 0))
        failing.allocate(OPERATOR, "f", spec, sliver_id="f")
        with pytest.raises(DeployFailed) as failed:
            failing.provision(OPERATOR, "f")
        assert failed.value.rolled_back
        failing.ledger.close()
        s = core.ledger.get("f")
        assert s is not None and s.state.value == "failed" and not s.deployed
        assert core.pool.vms() == [], "the taken VM's row outlived the rollback"
        assert second not in listed(prefix) and second not in qemu_pids(prefix)
        assert taps(netns) == set(), "a tap of the taken VM outlived the rollback"

        assert any(line.startswith("booted") for line in core.pool.tend())
        (third,) = [vm.domain for vm in core.pool.vms() if vm.state == READY]
        assert third not in (first, second)
    finally:
        core.pool.drain()
        core.ledger.close()
