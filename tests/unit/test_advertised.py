"""The incrementally kept advertisement equals the one recomputed from the
ledger after every step of a series of slivers (allocate, provision, delete,
expiry, drain, pool VMs), and applies only the slivers that changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from vnetlib.core.deployer import RecordingDeployer
from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import PipCore, Pricing
from vnetlib.core.pool import READY, TAKEN, PoolVm
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.players.advertised import Advertiser
from vnetlib.players.messages import advertisement_xml
from vnetlib.players.negotiation import advertise
from vnetlib.spec import load_vnet
from vnetlib.spec.model import Substrate

ROOT = Path(__file__).resolve().parents[2]
FIG6 = load_vnet(ROOT / "examples" / "figure6.xml")
LOCATIONS = ("berlin", "london", "paris")


def _substrate() -> Substrate:
    base = substrate_of(LabConfig(name="ad", hosts=6, cpu=8.0, memory_mb=16384))
    hosts = tuple(replace(h, location=LOCATIONS[i % len(LOCATIONS)])
                  for i, h in enumerate(base.hosts))
    return replace(base, hosts=hosts)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[PipCore]:
    substrate = _substrate()
    c = PipCore(substrate, Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", substrate.name),
                RecordingDeployer(), Pricing(1.5, 0.25, 60.0), pool_settings=None)
    try:
        yield c
    finally:
        c.ledger.close()


def _recomputed(core: PipCore) -> bytes:
    return advertisement_xml(advertise(core.name, core.residual(), core.pricing.per_cpu,
                                       core.pricing.per_mbps))


def test_equals_the_recomputed_advertisement_after_each_sliver(core: PipCore) -> None:
    ad = Advertiser(core.name)
    empty = ad.document(core)
    assert empty == _recomputed(core)
    steps = 0

    def check(changed: int) -> None:
        nonlocal steps
        before = ad.applied
        assert ad.document(core) == _recomputed(core)
        assert ad.applied - before == changed, "only the slivers that changed are applied"
        steps += 1

    for i in range(5):
        core.allocate("vnp", f"v{i}", FIG6)
        check(1)
    check(0)
    core.provision("vnp", "v1")
    check(2)  # a new version: the old one removed, the new one applied
    core.provision("vnp", "v3")
    check(2)
    core.delete("vnp", "v2")
    check(1)
    core.delete("vnp", "v0")
    check(1)
    core.allocate("vnp", "short", FIG6, expires_in=0.2)
    check(1)
    time.sleep(0.3)
    check(1)  # the reservation expired: its capacity is back
    host = core.substrate.hosts[0].name
    undrained = ad.document(core)
    core.ledger.set_drained(host, True)
    check(0)
    assert ad.document(core) != undrained
    core.ledger.set_drained(host, False)
    check(0)
    assert ad.document(core) == undrained
    vm = core.pool._insert(PoolVm("vm1", host, "img", 1, 4096, READY))
    check(0)
    assert ad.document(core) != undrained  # an untaken pool VM holds its memory
    taken = core.pool._cas(vm, replace(vm, state=TAKEN, sliver="x", vnode="n"))
    assert taken is not None
    check(0)
    assert ad.document(core) == undrained  # taken: its node's sliver counts it
    core.pool._forget([taken])
    check(0)
    for i in range(5, 12):  # until the substrate is full and some clamp at zero
        try:
            core.allocate("vnp", f"v{i}", FIG6)
        except Exception:
            break
        check(1)
    assert ad.document(core) != empty
    assert len(core.ledger.slivers()) > 4  # a new advertiser reads them all at once
    assert Advertiser(core.name).document(core) == ad.document(core)
    for s in core.ledger.slivers():
        core.delete(s.owner, s.name)
    assert ad.document(core) == empty == _recomputed(core)
    assert steps >= 12


def test_the_unchanged_document_is_served_from_the_cache(core: PipCore) -> None:
    ad = Advertiser(core.name)
    core.allocate("vnp", "a", FIG6)
    first = ad.document(core)
    assert ad.document(core) is first
    core.pricing = Pricing(2.0, 0.25, 60.0)
    assert ad.document(core) == _recomputed(core) != first
