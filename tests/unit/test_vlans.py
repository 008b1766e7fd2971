"""VLAN ids in the substrate's ledger: one per link, never two holders, never
reused while held, freed with the sliver, refused with a reason when they run
out; two processes taking ids at once get different ones."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import pytest

from vnetlib.core.deployer import RecordingDeployer
from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import PipCore, Pricing, Rejected
from vnetlib.core.vlans import CAPACITY, NoVlan, VlanLedger
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.plan.build import crossing_links
from vnetlib.players.db import sqlite_url
from vnetlib.spec import load_vnet

ROOT = Path(__file__).resolve().parents[2]
SUBSTRATE = substrate_of(LabConfig(name="vl", hosts=2))


def _vlans(tmp_path: Path) -> VlanLedger:
    return VlanLedger(Ledger(sqlite_url(tmp_path / "ledger.db"), SUBSTRATE.name))


def test_ids_per_link_kept_and_not_reused_while_held(tmp_path: Path) -> None:
    v = _vlans(tmp_path)
    a = v.allocate("s1", ["l1", "l2"])
    assert a == {"l1": 2, "l2": 3}
    assert v.allocate("s1", ["l1", "l2"]) == a  # a link keeps its id
    b = v.allocate("s2", ["l1"])
    assert b == {"l1": 4} and v.of("s2") == b
    v.release("s1")
    assert v.of("s1") == {} and v.free() == CAPACITY - 1
    assert v.allocate("s3", ["l9", "l8"]) == {"l9": 2, "l8": 3}  # freed ids come back
    assert v.allocate("s4", ["l1"]) == {"l1": 5}  # s2's 4 is still held


def test_no_free_id_is_refused_and_takes_nothing(tmp_path: Path) -> None:
    v = _vlans(tmp_path)
    v.allocate("big", [f"l{i}" for i in range(CAPACITY - 1)])
    assert v.free() == 1
    with pytest.raises(NoVlan, match="no free VLAN id for link b"):
        v.allocate("s", ["a", "b"])
    assert v.of("s") == {} and v.free() == 1  # the transaction took nothing


def test_quote_time_shortage_names_the_need(tmp_path: Path) -> None:
    v = _vlans(tmp_path)
    spec = load_vnet(ROOT / "examples" / "figure6.xml")
    vlan_sub = dataclasses.replace(SUBSTRATE, encapsulations=("vlan", "vxlan"))
    assert v.shortage(vlan_sub, spec) is None
    v.allocate("big", [f"l{i}" for i in range(CAPACITY - 3)])
    why = v.shortage(vlan_sub, spec)
    assert why == f"not enough VLAN ids on this substrate: the VNet may need {len(spec.links)}, " \
                  "3 are free"
    assert v.shortage(SUBSTRATE, spec) is None  # a VXLAN substrate needs none


def _take(url: str, sliver: str, out: multiprocessing.Queue) -> None:
    v = VlanLedger(Ledger(url, SUBSTRATE.name))
    out.put(v.allocate(sliver, [f"l{i}" for i in range(20)]))


def test_two_processes_never_share_an_id(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "ledger.db")
    VlanLedger(Ledger(url, SUBSTRATE.name))
    ctx = multiprocessing.get_context("spawn")  # a fork of threaded pytest can deadlock
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(url, f"s{i}", out)) for i in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    ids = [v for g in got for v in g.values()]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_the_pip_core_takes_plans_and_frees_the_ids(tmp_path: Path) -> None:
    """Provision takes one id per crossing link in the ledger, the plan carries
    exactly those, Delete frees them; a quote is declined when they are short."""
    big = substrate_of(LabConfig(name="vl", hosts=3, cpu=2.0))  # 6 nodes: spread
    vlan_sub = dataclasses.replace(big, encapsulations=("vlan", "vxlan"))
    core = PipCore(vlan_sub, Ledger(sqlite_url(tmp_path / "ledger.db"), vlan_sub.name),
                   RecordingDeployer(), Pricing(1.0, 0.0, 60.0))
    try:
        spec = load_vnet(ROOT / "examples" / "figure6.xml")
        core.allocate("vnp", "a", spec)
        s = core.provision("vnp", "a")
        assert core.vlans is not None
        held = core.vlans.of(s.id)
        crossing = set(crossing_links(spec, s.embedding.node_map))
        assert crossing and set(held) == crossing
        planned = {v["link"]: v["vlan"] for h in core.plan(s)["hosts"].values()
                   for v in h["vlan"]}
        assert planned == held
        core.vlans.allocate("other", [f"x{i}" for i in range(core.vlans.free())])
        with pytest.raises(Rejected, match="not enough VLAN ids"):
            core.check_fits(spec)
        core.vlans.release("other")
        core.delete("vnp", "a")
        assert core.vlans.of(s.id) == {} and core.vlans.free() == CAPACITY
        core.ledger.forget()
    finally:
        core.ledger.close()
