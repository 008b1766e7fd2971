"""Unit tests of vnet_domain's pure want/have/plan (no root, no libvirt)."""

from __future__ import annotations

import pytest
from ansible_collections.vnet.infra.plugins.module_utils import _domain as mu

from vnetlib.vm import domain as vm

PID = 4242
NS = "vl-lab-h1"
SPEC = mu.DomainSpec(
    "vn1",
    memory_mb=128,
    kernel="/k",
    initrd="/i",
    cmdline="console=ttyS0",
    interfaces=(mu.Nic("vt0", "52:54:00:00:00:01"), mu.Nic("vt1", "52:54:00:00:00:02")),
)
BRIDGES = {"vt0": "vb0", "vt1": "vb1"}
OTHER = mu.DomainSpec("vn1", memory_mb=64)


def want(state: str = "running", spec: mu.DomainSpec | None = SPEC, **kw: object) -> mu.Want:
    args: dict = {"netns": NS, "bridges": BRIDGES, **kw}
    return mu.Want("vn1", state, spec, **args)


def have(state: str = "running", **kw: object) -> mu.Have:
    taps = {
        "vt0": mu.Tap("vt0", NS, "vb0", True, True),
        "vt1": mu.Tap("vt1", NS, "vb1", True, True),
    }
    args: dict = {
        "exists": True,
        "spec": SPEC,
        "uuid": "u1",
        "state": state,
        "taps": taps,
        "netns_exists": True,
        "bridges": frozenset({"vb0", "vb1"}),
        **kw,
    }
    return mu.Have(**args)


START = [
    ["libvirt", "start", "vn1"],
    ["ip", "link", "set", "dev", "vt0", "netns", NS],
    ["ip", "-n", NS, "link", "set", "dev", "vt0", "master", "vb0"],
    ["ip", "-n", NS, "link", "set", "dev", "vt0", "up"],
    ["ip", "link", "set", "dev", "vt1", "netns", NS],
    ["ip", "-n", NS, "link", "set", "dev", "vt1", "master", "vb1"],
    ["ip", "-n", NS, "link", "set", "dev", "vt1", "up"],
]
BACK = [
    ["ip", "-n", NS, "link", "set", "dev", "vt0", "netns", str(PID)],
    ["ip", "-n", NS, "link", "set", "dev", "vt1", "netns", str(PID)],
]


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        pytest.param(
            want(),
            have(exists=False, spec=None, uuid=None, state="shutoff", taps={}),
            [
                ["libvirt", "define", "vn1"],
                ["ip", "tuntap", "add", "dev", "vt0", "mode", "tap"],
                ["ip", "tuntap", "add", "dev", "vt1", "mode", "tap"],
                *START,
            ],
            id="create-and-start",
        ),
        pytest.param(want(), have(), [], id="idempotent"),
        pytest.param(want(), have(state="shutoff"), [*BACK, *START], id="start-moves-taps-back"),
        pytest.param(
            want(),
            have(taps={"vt0": mu.Tap("vt0", NS, None, False), "vt1": have().taps["vt1"]}),
            [
                ["ip", "-n", NS, "link", "set", "dev", "vt0", "master", "vb0"],
                ["ip", "-n", NS, "link", "set", "dev", "vt0", "up"],
            ],
            id="reattach",
        ),
        pytest.param(
            want(),
            have(spec=OTHER),
            [
                ["libvirt", "define", "vn1"],
                ["libvirt", "destroy", "vn1"],
                *BACK,
                *START,
            ],
            id="changed-definition-restarts",
        ),
        pytest.param(
            want(state="present"),
            have(spec=OTHER),
            [["libvirt", "define", "vn1"]],
            id="present-only-redefines",
        ),
        pytest.param(
            want(kvm=True),
            have(),
            [["libvirt", "define", "vn1"], ["libvirt", "destroy", "vn1"], *BACK, *START],
            id="accel-change",
        ),
        pytest.param(
            want(),
            have(taps={"vt1": have().taps["vt1"]}),
            [
                ["libvirt", "destroy", "vn1"],
                ["ip", "tuntap", "add", "dev", "vt0", "mode", "tap"],
                BACK[1],
                *START,
            ],
            id="lost-tap-restarts",
        ),
        pytest.param(want(), have(state="paused"), [["libvirt", "resume", "vn1"]], id="resume"),
        pytest.param(want("paused"), have(), [["libvirt", "suspend", "vn1"]], id="suspend"),
        pytest.param(want("shutdown"), have(), [["libvirt", "shutdown", "vn1"]], id="shutdown"),
        pytest.param(want("shutdown"), have(state="shutoff"), [], id="shutdown-idempotent"),
        pytest.param(
            want("absent", None),
            have(),
            [
                ["libvirt", "destroy", "vn1"],
                ["libvirt", "undefine", "vn1"],
                ["ip", "-n", NS, "link", "del", "dev", "vt0"],
                ["ip", "-n", NS, "link", "del", "dev", "vt1"],
            ],
            id="absent",
        ),
        pytest.param(
            want("absent", None),
            have(exists=False, spec=None, taps={"vt0": mu.Tap("vt0", None)}),
            [],
            id="absent-leaves-taps-it-cannot-name",
        ),
        pytest.param(
            want("absent", None), have(exists=False, spec=None, taps={}), [], id="absent-idempotent"
        ),
        pytest.param(
            want("absent", None),
            have(state="shutoff", netns_exists=False, taps={"vt1": mu.Tap("vt1", None)}),
            [["libvirt", "undefine", "vn1"], ["ip", "link", "del", "dev", "vt1"]],
            id="absent-after-the-netns-went",
        ),
        pytest.param(
            want("absent", None),
            have(state="running", logs=mu.domain_logs("vn1")),
            [["libvirt", "destroy", "vn1"], ["libvirt", "undefine", "vn1"],
             ["rm", "-f", "/var/log/libvirt/qemu/vn1-serial.log",
              "/var/log/libvirt/qemu/vn1.log"],
             ["ip", "-n", NS, "link", "del", "dev", "vt0"],
             ["ip", "-n", NS, "link", "del", "dev", "vt1"]],
            id="absent-deletes-the-logs-libvirt-leaves",
        ),
        pytest.param(
            want("absent", None), have(exists=False, spec=None, taps={}, logs=()), [],
            id="absent-without-logs-idempotent",
        ),
        pytest.param(
            want(netns=None, bridges={}),
            have(exists=False, spec=None, state="shutoff", taps={}),
            [["libvirt", "define", "vn1"], ["libvirt", "start", "vn1"]],
            id="no-netns-no-taps",
        ),
    ],
)
def test_plan(w: mu.Want, h: mu.Have, expected: list[list[str]]) -> None:
    assert mu.plan(w, h, PID) == expected


def test_missing_bridge_and_netns_named() -> None:
    with pytest.raises(mu.PlanError, match="bridge vb1 for tap vt1 is not in netns vl-lab-h1"):
        mu.plan(want(), have(state="shutoff", bridges=frozenset({"vb0"})), PID)
    with pytest.raises(mu.PlanError, match="netns vl-lab-h1 does not exist"):
        mu.plan(want(), have(netns_exists=False), PID)


def test_want_from_params() -> None:
    params = {
        "name": "vn1",
        "state": "running",
        "hypervisor": "qemu",
        "vcpus": 1,
        "memory_mb": 128,
        "kernel": "/k",
        "initrd": "/i",
        "cmdline": "console=ttyS0",
        "serial": "pty",
        "vnc": False,
        "interfaces": [
            {"tap": "vt0", "mac": "52:54:00:00:00:01", "bridge": "vb0"},
            {"tap": "vt1", "mac": "52:54:00:00:00:02", "bridge": "vb1"},
        ],
        "netns": NS,
    }
    assert mu.want_from_params(params, kvm=True) == want(kvm=True)
    here = mu.want_from_params({**params, "netns": None, "libvirt_pid": 1}, kvm=False)
    assert here == want(netns=None, libvirt_pid=1) and here.owns_taps
    xen = mu.want_from_params({**params, "hypervisor": "xen"}, kvm=True)
    assert xen.spec is not None and xen.spec.hypervisor == "xen" and xen.kvm is False


def test_parse_taps_and_bridges() -> None:
    text = """[
      {"ifname": "lo", "flags": ["LOOPBACK", "UP"]},
      {"ifname": "vb0", "flags": ["UP"], "linkinfo": {"info_kind": "bridge"}},
      {"ifname": "vt0", "flags": ["BROADCAST", "UP", "LOWER_UP"], "master": "vb0",
       "linkinfo": {"info_kind": "tun", "info_data": {"type": "tap"}}},
      {"ifname": "vt1", "flags": ["BROADCAST", "NO-CARRIER"],
       "linkinfo": {"info_kind": "tun"}}
    ]"""
    assert mu.parse_taps(text, NS) == {
        "vt0": mu.Tap("vt0", NS, "vb0", True, True),
        "vt1": mu.Tap("vt1", NS, None, False, False),
    }
    assert mu.parse_bridges(text) == frozenset({"vb0"})


@pytest.mark.parametrize("kvm", [False, True])
@pytest.mark.parametrize(
    "fields",
    [
        {"name": "q1", "memory_mb": 64},
        {"name": "q2", "kernel": "/k", "initrd": "/i", "cmdline": "a b", "vnc": True},
        {"name": "x1", "hypervisor": "xen", "kernel": "/k", "serial": None},
    ],
)
def test_module_copy_of_the_domain_model_matches_vnetlib(fields: dict, kvm: bool) -> None:
    """module_utils/_domain.py carries a copy of vnetlib/vm/domain.py: same XML, same parse."""
    nics = (("vt0", "52:54:00:00:00:01"),)
    ours = vm.DomainSpec(**fields, interfaces=tuple(vm.Nic(*n) for n in nics))
    theirs = mu.DomainSpec(**fields, interfaces=tuple(mu.Nic(*n) for n in nics))
    xml = vm.domain_xml(ours, kvm=kvm, uuid="u")
    assert mu.domain_xml(theirs, kvm=kvm, uuid="u") == xml
    assert mu.parse_domain(xml) == (theirs, kvm and theirs.hypervisor == "qemu")
    assert vm.parse_domain(xml) == (ours, kvm and ours.hypervisor == "qemu")
    assert mu.DomainSpec.__slots__ == vm.DomainSpec.__slots__


def test_ip_commands_of_one_namespace_are_grouped_for_one_batch() -> None:
    cmds = [["libvirt", "define", "d"],
            ["ip", "tuntap", "add", "dev", "t0", "mode", "tap"],
            ["ip", "tuntap", "add", "dev", "t1", "mode", "tap"],
            ["libvirt", "attach", "d", "t0"],
            ["ip", "link", "set", "dev", "t0", "netns", "h1"],
            ["ip", "-n", "h1", "link", "set", "dev", "t0", "up"],
            ["ip", "-n", "h1", "link", "set", "dev", "t1", "up"],
            ["ip", "-n", "h2", "link", "set", "dev", "t2", "up"],
            ["ip", "link", "set", "dev", "t 3", "up"]]
    assert mu.ip_groups(cmds) == [cmds[0:1], cmds[1:3], cmds[3:4], cmds[4:5], cmds[5:7],
                                  cmds[7:8], cmds[8:9]]


def test_a_running_vm_with_nics_of_its_own_is_not_taken_over() -> None:
    nic = mu.Nic("vtother0", "02:00:00:00:00:01")
    spec = mu.DomainSpec(name="d", kernel="/k", cmdline="vnet.hostname=pool", acpi=True,
                         interfaces=(nic,))
    want = mu.Want("d", "running", mu.replace(spec, cmdline="vnet.hostname=r1", interfaces=(
        mu.Nic("vtr1e0", "02:00:00:00:00:02"),)), netns="h1", pool=True,
        bridges={"vtr1e0": "vb0"})
    have = mu.Have(exists=True, spec=spec, state="running", netns_exists=True,
                   taps={"vtother0": mu.Tap("vtother0", "h1")}, bridges=frozenset({"vb0"}))
    assert not mu.adoptable(want, have)
    pool = mu.Nic(mu.pool_tap("d", 0), "02:00:00:00:00:01")
    have = mu.replace(have, spec=mu.replace(spec, interfaces=(pool,)),
                      taps={pool.tap: mu.Tap(pool.tap, "h1")})
    assert mu.adoptable(want, have)
    assert ["guest", "configure", "d", "02:00:00:00:00:02=02:00:00:00:00:01"] in mu.plan(
        want, have, 1)


NSENTER = ["nsenter", "-t", "1", "-n", "ip"]


def test_taps_on_a_host_whose_libvirtd_is_in_another_namespace() -> None:
    """The SSH lab: the module runs in the host's namespace, libvirtd in the
    root one (pid 1's): taps made there, moved here after the start, put on
    the bridges here; moved back there before a restart; deleted where they are."""
    w = want(netns=None, libvirt_pid=1)
    fresh = have(exists=False, spec=None, uuid=None, state="shutoff", taps={}, netns_exists=False)
    assert mu.plan(w, fresh, PID) == [
        ["libvirt", "define", "vn1"],
        [*NSENTER, "tuntap", "add", "dev", "vt0", "mode", "tap"],
        [*NSENTER, "tuntap", "add", "dev", "vt1", "mode", "tap"],
        ["libvirt", "start", "vn1"],
        [*NSENTER, "link", "set", "dev", "vt0", "netns", str(PID)],
        ["ip", "link", "set", "dev", "vt0", "master", "vb0"],
        ["ip", "link", "set", "dev", "vt0", "up"],
        [*NSENTER, "link", "set", "dev", "vt1", "netns", str(PID)],
        ["ip", "link", "set", "dev", "vt1", "master", "vb1"],
        ["ip", "link", "set", "dev", "vt1", "up"],
    ]
    placed = have(netns_exists=False, taps={"vt0": mu.Tap("vt0", None, "vb0", True, True),
                                           "vt1": mu.Tap("vt1", None, "vb1", True, True)})
    assert mu.plan(w, placed, PID) == []
    changed = mu.replace(SPEC, memory_mb=256)
    assert mu.plan(mu.replace(w, spec=changed), placed, PID)[:4] == [
        ["libvirt", "define", "vn1"],
        ["libvirt", "destroy", "vn1"],
        ["ip", "link", "set", "dev", "vt0", "netns", "1"],
        ["ip", "link", "set", "dev", "vt1", "netns", "1"],
    ]
    half = mu.replace(placed, state="shutoff", taps={"vt0": mu.Tap("vt0", None),
                                                      "vt1": mu.Tap("vt1", 1)})
    assert mu.plan(want("absent", None, netns=None, libvirt_pid=1), half, PID) == [
        ["libvirt", "undefine", "vn1"],
        ["ip", "link", "del", "dev", "vt0"],
        [*NSENTER, "link", "del", "dev", "vt1"],
    ]
    groups = mu.ip_groups(mu.plan(w, fresh, PID))
    assert [len(g) for g in groups] == [1, 2, 1, 1, 2, 1, 2]


def test_taps_on_a_host_that_runs_libvirtd_itself() -> None:
    """A real KVM host: libvirtd, the bridges and the module in one namespace:
    taps made here, and after the start only put on their bridges."""
    w = want(netns=None)
    fresh = have(exists=False, spec=None, uuid=None, state="shutoff", taps={}, netns_exists=False)
    assert mu.plan(w, fresh, PID) == [
        ["libvirt", "define", "vn1"],
        ["ip", "tuntap", "add", "dev", "vt0", "mode", "tap"],
        ["ip", "tuntap", "add", "dev", "vt1", "mode", "tap"],
        ["libvirt", "start", "vn1"],
        ["ip", "link", "set", "dev", "vt0", "master", "vb0"],
        ["ip", "link", "set", "dev", "vt0", "up"],
        ["ip", "link", "set", "dev", "vt1", "master", "vb1"],
        ["ip", "link", "set", "dev", "vt1", "up"],
    ]
    with pytest.raises(mu.PlanError, match="bridge vb1 for tap vt1 is not in this host"):
        mu.plan(w, mu.replace(fresh, bridges=frozenset({"vb0"})), PID)
