"""The pool's accounting in the ledger, on a recording deployer: concurrent
provisionings (each with its own core and database connection, as separate
PIP processes) take each ready pool VM at most once, the rest boot on demand;
the plan takes a pool VM over under its own name; a deletion or a failed
provisioning releases what the sliver took; surplus and stale rows go."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from vnetlib.core.deployer import RecordingDeployer
from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import DeployFailed, PipCore, Pricing, Rejected
from vnetlib.core.pool import BOOTING, READY, TAKEN, PoolSettings, PoolVm
from vnetlib.core.records import State
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.spec import parse_vnet
from vnetlib.spec.model import VNetSpec
from vnetlib.vm.image import GuestImage

SUBSTRATE = substrate_of(LabConfig(name="tp", hosts=1, cpu=64.0, memory_mb=65536))
HOST = SUBSTRATE.hosts[0].name
IMAGE = GuestImage(Path("/img/vmlinuz"), Path("/img/initrd.gz"), "key1",
                   "console=ttyS0 panic=-1 quiet")


def one_vm(name: str) -> bytes:
    return f"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="{name}">
  <node id="v" kind="vm" hypervisor="qemu" cpu="1" memory="128"/><node id="n"/>
  <link id="vn"><endpoint node="v" interface="eth0"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="n" interface="eth0"><address>198.19.0.2/30</address></endpoint></link>
</vnet>""".encode()


def make_core(url: str, deployer: RecordingDeployer) -> PipCore:
    return PipCore(SUBSTRATE, Ledger(url, SUBSTRATE.name), deployer, Pricing(1.0, 0.0, 600),
                   images=lambda: IMAGE, pool_settings=PoolSettings({"*": 2}),
                   pool_background=False)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def ready_vms(core: PipCore, count: int) -> list[str]:
    names = [f"vn-tp1-pool-{i:08x}" for i in range(count)]
    for name in names:
        core.pool._insert(PoolVm(name, HOST, IMAGE.key, 1, 128, READY, holder="t"))
    return names


def test_concurrent_provisionings_take_each_pool_vm_once(url: str) -> None:
    deployer = RecordingDeployer(delay=0.05)
    first = make_core(url, deployer)
    pool = ready_vms(first, 3)
    cores = [make_core(url, deployer) for _ in range(8)]
    barrier = threading.Barrier(len(cores))
    errors: list[BaseException] = []

    def provision(i: int, core: PipCore) -> None:
        try:
            core.allocate("o", f"x{i}", parse_vnet(one_vm(f"x{i}")), sliver_id=f"x{i}")
            barrier.wait()
            core.provision("o", f"x{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=provision, args=(i, c)) for i, c in enumerate(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    slivers = first.ledger.slivers()
    assert len(slivers) == 8 and all(s.state is State.READY for s in slivers)
    taken = [s.domains["v"] for s in slivers if s.domains]
    assert sorted(taken) == pool, "every pool VM taken exactly once"
    rows = {vm.domain: vm for vm in first.pool.vms()}
    for s in slivers:
        plan = first.plan(s)
        (task,) = plan["hosts"][HOST]["domains"]
        if s.domains:
            assert rows[s.domains["v"]].state == TAKEN and rows[s.domains["v"]].sliver == s.id
            assert task["name"] == s.domains["v"] and task["pool"] is True
        else:  # booted on demand, under its own name
            assert task["name"] == s.domain("v") == f"vn-{SUBSTRATE.name}-{s.id}-v"
            assert task["pool"] is False
    for c in cores:
        c.ledger.close()

    for s in slivers:
        first.delete("o", s.name)
    assert first.pool.vms() == [], "a deleted sliver's pool VMs are forgotten (destroyed)"
    first.ledger.close()


def test_a_failed_take_is_rolled_back_and_forgotten(url: str) -> None:
    deployer = RecordingDeployer(fail_hosts={HOST})
    core = make_core(url, deployer)
    (name,) = ready_vms(core, 1)
    core.allocate("o", "f", parse_vnet(one_vm("f")), sliver_id="f")
    with pytest.raises(DeployFailed):
        core.provision("o", "f")
    s = core.ledger.get("f")
    assert s is not None and s.state is State.FAILED and s.domains == {"v": name}
    # the removal failed too (the host is down): the row stays until it is destroyed
    assert [vm.state for vm in core.pool.vms()] == [TAKEN]
    deployer.fail_hosts.clear()
    core.delete("o", "f")
    assert core.pool.vms() == [] and ("f", "absent") in deployer.runs
    core.ledger.close()


def test_rows_nobody_uses_are_destroyed(url: str) -> None:
    core = make_core(url, RecordingDeployer())
    names = ready_vms(core, 1)
    old = core.pool._insert(PoolVm("vn-tp1-pool-old", HOST, "key0", 1, 128, READY, holder="t"))
    dead = core.pool._insert(PoolVm("vn-tp1-pool-dead", HOST, IMAGE.key, 1, 128, BOOTING,
                                    holder="elsewhere:1:0"))
    orphan = core.pool._insert(PoolVm("vn-tp1-pool-orph", HOST, IMAGE.key, 1, 128, TAKEN,
                                      sliver="gone", vnode="v", holder="t"))
    core.pool.alive = lambda holder: holder != "elsewhere:1:0"
    seen = dict.fromkeys([*names, old.domain], "running")
    core.pool.observe = lambda ds: {d: seen.get(d, "absent") for d in ds}
    done = core.pool.tend(boot=False)
    assert sorted(done) == sorted([
        f"destroyed {old.domain} (of an older image)",
        f"destroyed {dead.domain} (abandoned while booting)",
        f"destroyed {orphan.domain} (taken by gone, which ended)"])
    assert [vm.domain for vm in core.pool.vms()] == names
    core.ledger.close()


def test_settings() -> None:
    assert PoolSettings.parse("3").size("h9") == 3
    s = PoolSettings.parse("h1=2,h2=0", memory_mb=256)
    assert (s.size("h1"), s.size("h2"), s.size("h3"), s.memory_mb, s.on) == (2, 0, 0, 256, True)
    assert not PoolSettings.parse("0").on
    with pytest.raises(ValueError, match="want N or HOST=N"):
        PoolSettings.parse("h1=x")
    assert replace(s, sizes={}).on is False


def test_untaken_pool_vms_hold_memory_the_residual_loses(url: str) -> None:
    core = make_core(url, RecordingDeployer())
    ready_vms(core, 2)
    core.pool._insert(PoolVm("vn-tp1-pool-boot", HOST, IMAGE.key, 1, 256, BOOTING, holder="t"))
    core.pool._insert(PoolVm("vn-tp1-pool-took", HOST, IMAGE.key, 1, 128, TAKEN, sliver="s",
                             vnode="v", holder="t"))
    assert core.pool.held() == {HOST: 128 + 128 + 256}
    assert core.residual().hosts[0].memory_mb == SUBSTRATE.hosts[0].memory_mb - 512
    core.ledger.close()


def test_a_pip_config_sizes_its_pool() -> None:
    """`[pip] pool_*` become the PIP's pool settings (pre-wired NICs included);
    without pool_size the environment decides."""
    from vnetlib.players.config import from_dict
    from vnetlib.players.pip import pool_settings

    base = {"name": "pip-a", "role": "pip", "store": "sqlite://", "pki": "/nonexistent"}
    config = from_dict({**base, "pip": {"substrate": "s.xml", "inventory": "i.yml",
                                        "pool_size": "h1=2,h2=1", "pool_memory_mb": 96,
                                        "pool_nics": 2}})
    settings = pool_settings(config)
    assert settings is not None
    assert settings.nics == 2 and settings.memory_mb == 96
    assert settings.sizes == {"h1": 2, "h2": 1}


def small_core(url: str, memory_mb: int) -> PipCore:
    substrate = substrate_of(LabConfig(name="tq", hosts=1, cpu=64.0, memory_mb=memory_mb))
    return PipCore(substrate, Ledger(url, substrate.name), RecordingDeployer(),
                   Pricing(1.0, 0.0, 600), images=lambda: IMAGE,
                   pool_settings=PoolSettings({"*": 0}), pool_background=False)


def sized_vm(memory: int) -> VNetSpec:
    return parse_vnet(one_vm("big").replace(b'memory="128"', f'memory="{memory}"'.encode()))


def pool_rows(core: PipCore, count: int, memory: int) -> None:
    host = core.substrate.hosts[0].name
    for i in range(count):
        core.pool._insert(PoolVm(f"vn-tq1-pool-{memory}-{i}", host, IMAGE.key, 1, memory, READY,
                                 holder="t"))


def test_quote_refused_when_only_the_pools_memory_would_fit_it(url: str) -> None:
    """1408 MiB; three ready pool VMs of 256 MiB (of no size the request takes)
    hold 768: a VM node of 640 plus a namespace of 128 no longer fit."""
    core = small_core(url, 1408)
    try:
        core.check_fits(sized_vm(640))  # without the pool it fits
        pool_rows(core, 3, 256)
        assert core.residual().hosts[0].memory_mb == 1408 - 768
        with pytest.raises(Rejected, match="memory"):
            core.check_fits(sized_vm(640))
    finally:
        core.ledger.close()


def test_a_node_that_takes_a_pool_vm_is_charged_once(url: str) -> None:
    """Four ready VMs of 256 MiB on 1408: 384 left, not enough for a VM node of
    256 and a namespace of 128 were the VM's memory charged as the pool's and
    as the node's; it takes a pool VM, so it fits, and after the take the
    memory is counted once (three untaken VMs and the sliver: 128 left)."""
    core = small_core(url, 1408 - 128)
    try:
        pool_rows(core, 4, 256)
        assert core.residual().hosts[0].memory_mb == 1280 - 1024
        core.check_fits(sized_vm(256))
        core.allocate("o", "big", sized_vm(256), sliver_id="big")
        s = core.provision("o", "big")
        assert s.state is State.READY and s.domains["v"].startswith("vn-tq1-pool-256-")
        assert core.residual().hosts[0].memory_mb == 1280 - 3 * 256 - 256 - 128
        core.check_fits(sized_vm(256))  # the next takes one of the three left
        with pytest.raises(Rejected, match="memory"):
            core.check_fits(sized_vm(512))  # no pool VM of its size: 640 on 128
    finally:
        core.ledger.close()


def test_a_refill_boots_only_into_free_memory(url: str) -> None:
    """Slivers and the pool's own VMs hold memory: a refill that would overdraw
    the host boots what fits and says what it left out."""
    small = substrate_of(LabConfig(name="tp", hosts=1, cpu=64.0, memory_mb=700))
    core = PipCore(small, Ledger(url, small.name), RecordingDeployer(), Pricing(1.0, 0.0, 600),
                   images=lambda: IMAGE, pool_settings=PoolSettings({"*": 8}),
                   pool_background=False)
    core.allocate("o", "a", parse_vnet(one_vm("a")), sliver_id="a")
    free = core.residual().hosts[0].memory_mb
    assert 128 <= free < 700
    done = core.pool.tend()
    booted = [vm for vm in core.pool.vms() if vm.state == READY]
    assert len(booted) == free // 128 < 8
    assert f"not booted on {HOST}: {8 - len(booted)} of 8 VMs of 128 MiB ({free} MiB free)" in done
    assert core.residual().hosts[0].memory_mb == free - 128 * len(booted)
    core.pool.observe = lambda ds: dict.fromkeys(ds, "running")
    assert core.pool.tend() == [
        f"not booted on {HOST}: {8 - len(booted)} of {8 - len(booted)} VMs of 128 MiB "
        f"({free - 128 * len(booted)} MiB free)"]
    core.ledger.close()
