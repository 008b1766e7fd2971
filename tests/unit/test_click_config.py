"""Click configurations from a plan: golden files for Figure 6 on three hosts,
and the properties the module relies on (order-independent text, refusals)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from vnetlib.click.config import (
    ClickConfigError,
    ClickLink,
    host_links,
    plan_configs,
    render,
)
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.plan.build import build_plan
from vnetlib.plan.model import DeploymentPlan
from vnetlib.spec import load_vnet

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "data" / "click"
FIG6 = load_vnet(ROOT / "examples" / "figure6.xml")
NODE_MAP = {"e1": "h1", "r1": "h1", "r2": "h2", "r3": "h2", "r4": "h3", "e2": "h3"}


def _plan() -> DeploymentPlan:
    vnis = {link.id: 7000 + i for i, link in enumerate(FIG6.links)}
    return build_plan(FIG6, NODE_MAP, substrate_of(LabConfig(name="lab", hosts=3)),
                      vnet_id="fig6-1", lab="lab", vnis=vnis)


def _latency() -> dict[str, float]:
    return {lk.id: lk.latency_ms for lk in FIG6.links if lk.latency_ms is not None}


def test_figure6_configurations_match_golden_files() -> None:
    configs = plan_configs(_plan(), _latency())
    assert sorted(configs) == ["h1", "h2", "h3"]
    for host, text in configs.items():
        path = GOLDEN / f"fig6-{host}.click"
        if os.environ.get("VNET_REGEN_GOLDEN"):
            path.write_text(text)
        assert text == path.read_text(), f"{path} differs (VNET_REGEN_GOLDEN=1 rewrites it)"


def test_each_crossing_segment_has_its_demux_shaper_and_delay() -> None:
    plan = _plan()
    for host in plan.hosts:
        text = render(host_links(host, _latency()))
        for task in host.links:
            if task.tunnel is None:
                assert task.bridge not in text
                continue
            t = task.tunnel
            assert f"4/{t.vni:06x}" in text  # demux on the tunnel id
            assert f"StoreData(0, \\<08000000 {t.vni:06x}00>)" in text
            assert f"UDPIPEncap({t.local}, 47900, {t.remote}, 47900" in text
            assert "BandwidthRatedUnqueue(12500000Bps)" in text  # 100 Mbit/s
            assert "DelayUnqueue(0.005000)" in text


def _link(device: str, vni: int, remote: str = "198.18.0.2") -> ClickLink:
    return ClickLink(link=device, vni=vni, bridge="vb" + device[2:], device=device,
                     click_device="ck" + device[2:], local="198.18.0.1", remote=remote)


def test_text_does_not_depend_on_order_and_keeps_element_names() -> None:
    a, b = _link("vxaaaa", 1), _link("vxbbbb", 2, "198.18.0.3")
    assert render([a, b]) == render([b, a])
    one = render([a])
    two = render([a, b])
    # the segment already running keeps its elements' names across the swap
    for name in ("ckaaaa_in", "ckaaaa_out", "tx", "rs"):
        assert f"{name} ::" in one and f"{name} ::" in two


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ([_link("vxaaaa", 1), _link("vxbbbb", 1)], "share tunnel id 1"),
        ([_link("vxaaaa", 1), replace(_link("vxbbbb", 2), local="198.18.0.9")],
         "sends from one address"),
        ([_link("vxaaaa", 1 << 24)], "not 24 bits"),
        ([_link("vx" + "a" * 14, 1)], "device 'vxaaaaaaaaaaaaaa' is not an interface name"),
        ([replace(_link("vxaaaa", 1), bandwidth_mbps=0.0)], "bandwidth must be positive"),
    ],
)
def test_refusals(links: list[ClickLink], message: str) -> None:
    with pytest.raises(ClickConfigError, match=message):
        render(links)


INJECT = "x);\nToDump(/etc/cron.d/x"  # would add an element writing a root-owned file


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "vx" + INJECT, "device .* is not an interface name"),
        ("click_device", "ck,aaaa", "click_device 'ck,aaaa' is not an interface name"),
        ("bridge", "vb aaaa", "bridge 'vb aaaa' is not an interface name"),
        ("bridge", "", "bridge '' is not an interface name"),
        ("link", "l1\nrs -> ToDump(/tmp/x);", "link id .* is not 1-128 of"),
        ("local", "198.18.0.1, 1, 198.18.0.9", "local '198.18.0.1, 1, 198.18.0.9' is not an IPv4"),
        ("remote", "198.18.0.2)\n", "remote .* is not an IPv4 address"),
        ("remote", "2001:db8::1", "remote '2001:db8::1' is not an IPv4 address"),
        ("remote", "198.18.0.02", "is not an IPv4 address"),
        ("latency_ms", float("nan"), "latency nan is not a finite number"),
        ("bandwidth_mbps", float("inf"), "bandwidth inf is not a finite number"),
        ("vni", "5001", "tunnel id '5001' is not 24 bits"),
    ],
)
def test_what_cannot_be_pasted_into_click_text_is_refused(field: str, value: object,
                                                          message: str) -> None:
    bad = replace(_link("vxaaaa", 1), **{field: value})
    with pytest.raises(ClickConfigError, match=message):
        render([bad, _link("vxbbbb", 2)])


def test_port_must_be_a_udp_port() -> None:
    with pytest.raises(ClickConfigError, match="port 70000 is not a UDP port"):
        render([_link("vxaaaa", 1)], port=70000)


def test_device_commands_make_only_what_is_missing() -> None:
    from vnetlib.collection import module_utils as load

    device_commands = load("_click").device_commands
    lk = _link("vxaaaa", 1)
    made = device_commands([lk], [], {}, "h1")
    assert made == [
        ["ip", "-n", "h1", "link", "add", "vbaaaa", "type", "bridge"],
        ["ip", "-n", "h1", "link", "set", "vbaaaa", "up"],
        ["ip", "-n", "h1", "link", "add", "vxaaaa", "mtu", "1500", "type", "veth",
         "peer", "name", "ckaaaa", "mtu", "1500"],
        ["ip", "-n", "h1", "link", "set", "vxaaaa", "master", "vbaaaa"],
        ["ip", "-n", "h1", "link", "set", "vxaaaa", "up"],
        ["ip", "-n", "h1", "link", "set", "ckaaaa", "up"],
    ]
    have = {"vbaaaa": {"flags": ["UP"]}, "vxaaaa": {"master": "vbaaaa", "flags": ["UP"]},
            "ckaaaa": {"flags": ["UP"]}}
    assert device_commands([lk], [], have, None) == []
    assert device_commands([], [lk], have, None) == [["ip", "link", "del", "vxaaaa"]]


def test_half_present_pair_is_deleted_then_made_in_that_order() -> None:
    """The bridge end left without its Click end (or the other way round): the
    survivor goes first, then the pair is made again; deletions of dropped
    segments are a list of their own, run after the change."""
    from vnetlib.collection import module_utils as load

    click = load("_click")
    lk, gone = _link("vxaaaa", 1), _link("vxcccc", 3)
    base = {"vbaaaa": {"flags": ["UP"]}, "vxcccc": {"flags": ["UP"]}}
    add = ["ip", "link", "add", "vxaaaa", "mtu", "1500", "type", "veth", "peer", "name",
           "ckaaaa", "mtu", "1500"]
    for survivor in ("vxaaaa", "ckaaaa"):
        have = {**base, survivor: {"master": "vbaaaa", "flags": ["UP"]}}
        assert click.make_commands([lk], have, None) == [
            ["ip", "link", "del", survivor], add,
            ["ip", "link", "set", "vxaaaa", "master", "vbaaaa"],
            ["ip", "link", "set", "vxaaaa", "up"], ["ip", "link", "set", "ckaaaa", "up"]]
        assert click.drop_commands([gone], [lk], have, None) == [["ip", "link", "del", "vxcccc"]]
        both = click.device_commands([lk], [gone], have, None)
        assert both[0] == ["ip", "link", "del", survivor] and both[1] == add
        assert both[-1] == ["ip", "link", "del", "vxcccc"]


@pytest.mark.parametrize("name", ["../../x", ".hidden", "a/b", "", "a\nb", ".."])
def test_state_names_stay_inside_the_run_directory(tmp_path: Path, name: str) -> None:
    """A VNet or instance name is one path part of the state: `state: absent`
    with vnet ../../x must not unlink <somewhere>/x.json."""
    from vnetlib.click.process import ClickError, Instance, apply

    run = tmp_path / "run"
    victim = run / "x.json"  # where <run>/h1/owners/../../x.json leads
    run.mkdir()
    victim.write_text("[]")
    with pytest.raises(ClickError, match=r"VNet .* is not a name"):
        apply(Instance("h1", rundir=run), name, [], present=False, click=None, port=47900,
              check_mode=False)
    with pytest.raises(ClickError, match=r"Click instance .* is not a name"):
        Instance(name, rundir=run)
    assert victim.read_text() == "[]" and list(run.iterdir()) == [victim]  # nothing made
    Instance("vl-lab.h1_2", rundir=run)  # what the labs use passes
