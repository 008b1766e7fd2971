"""vnet.infra.vnet_domain taking over pool VMs, several domains in one run.

Pool VMs boot with pre-wired NICs whose taps wait in the host's namespace;
a take renames them to the node's taps, deletes the spare ones, hot-plugs
only the NICs beyond them, and reconfigures the guest over its serial
console, with no restart (same QEMU pid).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

import pytest
from ansible_collections.vnet.infra.plugins.module_utils._domain import (
    DomainSpec,
    Have,
    Nic,
    Tap,
    Want,
    plan,
    pool_tap,
)

from tests.ansible.test_vnet_domain import (  # noqa: F401  (fixtures)
    QEMU_URI,
    Runner,
    collections,
    daemons,
    libvirt,
    link,
    lookup,
    run,
    sh,
)
from vnetlib.vm import serial
from vnetlib.vm.image import build_image, kernel_cmdline, mac_for
from vnetlib.vm.migrate import spare_tap


def _qemu_pid(name: str) -> int | None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(
                a.startswith(f"guest={name},".encode()) for a in argv):
            return int(cmdline.parent.name)
    return None


def taps_in(netns: str | None) -> set[str]:
    done = sh("ip", *(["-n", netns] if netns else []), "-o", "link", "show", "type", "tun")
    return {line.split(": ")[1].split("@")[0] for line in done.stdout.splitlines()}


def test_pool_vms_taken_by_their_prewired_nics_and_serial_reconfig(
        run: Runner, daemons: object) -> None:  # noqa: F811
    """Two pool VMs booted in one run, with 2 and 1 pre-wired NICs (taps in the
    host's namespace, on no bridge). Taken in one run: the first for a node
    with one NIC (its first tap renamed to the node's and bridged, the spare
    kept down on no bridge: QEMU holds it; no hot-plug), the second for a
    node with two (its pool NIC renamed, the second hot-plugged). Same QEMU
    processes, both answer ping on every NIC under the node's hostname; a
    second run changes nothing; removal leaves no tap, the kept spare included."""
    image = build_image()
    prefix = "vp" + secrets.token_hex(3)
    netns = f"{prefix}-h1"
    names = [f"{prefix}-pool-a", f"{prefix}-pool-b"]
    bridges = ["vbr0", "vbr1"]
    octet = secrets.randbelow(250) + 1
    base = {"hypervisor": "qemu", "vcpus": 1, "memory_mb": 128, "kernel": str(image.kernel),
            "initrd": str(image.initrd), "pool": True}
    pool_line = kernel_cmdline(image, "pool", [], False)
    pool_nics = {names[0]: 2, names[1]: 1}
    conn = libvirt.open(QEMU_URI)
    nodes = {names[0]: ("r1", 1), names[1]: ("r2", 2)}
    planned = {n: [(f"{prefix}{v}e{i}", mac_for(prefix, v, f"eth{i}"), bridges[i],
                    f"198.18.{octet}.{10 * (i + 1) + k}") for i in range(count)]
               for k, (n, (v, count)) in enumerate(nodes.items())}
    try:
        sh("ip", "netns", "add", netns)
        for i, bridge in enumerate(bridges):
            sh("ip", "-n", netns, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", netns, "address", "add", f"198.18.{octet + i}.2/24", "dev", bridge)
            sh("ip", "-n", netns, "link", "set", bridge, "up")

        booted = run({"uri": QEMU_URI, "accel": "tcg", "netns": netns, "domains": [
            {**base, "name": n, "state": "running", "cmdline": pool_line,
             "ready_marker": "vnet-guest-ready pool",
             "interfaces": [{"tap": pool_tap(n, i), "mac": mac_for(n, "pool", f"eth{i}")}
                            for i in range(pool_nics[n])]} for n in names]})
        assert booted["changed"] is True
        for n in names:
            assert conn.lookupByName(n).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert taps_in(netns) == {pool_tap(n, i) for n in names for i in range(pool_nics[n])}
        pids = {n: _qemu_pid(n) for n in names}
        assert None not in pids.values()

        def item(n: str) -> dict:
            vnode, _ = nodes[n]
            addrs = [(mac, [f"198.18.{octet + i}.{host.rsplit('.', 1)[1]}/24"])
                     for i, (_, mac, _, host) in enumerate(planned[n])]
            return {**base, "name": n, "state": "running", "vnode": vnode,
                    "cmdline": kernel_cmdline(image, vnode, addrs, True),
                    "interfaces": [{"tap": t, "mac": m, "bridge": b}
                                   for t, m, b, _ in planned[n]]}

        take = {"uri": QEMU_URI, "accel": "tcg", "netns": netns,
                "domains": [item(n) for n in names]}
        checked = run(take, check=True)
        assert checked["changed"] is True and taps_in(None).isdisjoint(
            t for n in names for t, _, _, _ in planned[n])
        started = time.monotonic()
        taken = run(take)
        print(f"module run that took two pool VMs: {time.monotonic() - started:.2f} s, "
              f"{ {n: d['timings'] for n, d in taken['domains'].items()} }")
        a, b = names
        (ta, ma, _, _), = planned[a]
        (tb0, mb0, _, _), (tb1, _, _, _) = planned[b]
        assert taken["commands"][a] == [
            ["libvirt", "define", a],
            ["ip", "-n", netns, "link", "set", "dev", pool_tap(a, 0), "down"],
            ["ip", "-n", netns, "link", "set", "dev", pool_tap(a, 0), "name", ta],
            ["ip", "-n", netns, "link", "set", "dev", pool_tap(a, 1), "down", "nomaster"],
            ["guest", "configure", a, f"{ma}={mac_for(a, 'pool', 'eth0')}"],
            ["ip", "-n", netns, "link", "set", "dev", ta, "master", bridges[0]],
            ["ip", "-n", netns, "link", "set", "dev", ta, "up"],
        ], taken["commands"][a]
        assert taken["commands"][b] == [
            ["libvirt", "define", b],
            ["ip", "-n", netns, "link", "set", "dev", pool_tap(b, 0), "down"],
            ["ip", "-n", netns, "link", "set", "dev", pool_tap(b, 0), "name", tb0],
            ["ip", "tuntap", "add", "dev", tb1, "mode", "tap"],
            ["libvirt", "attach", b, tb1],
            ["guest", "configure", b, f"{mb0}={mac_for(b, 'pool', 'eth0')}"],
            ["ip", "-n", netns, "link", "set", "dev", tb0, "master", bridges[0]],
            ["ip", "-n", netns, "link", "set", "dev", tb0, "up"],
            ["ip", "link", "set", "dev", tb1, "netns", netns],
            ["ip", "-n", netns, "link", "set", "dev", tb1, "master", bridges[1]],
            ["ip", "-n", netns, "link", "set", "dev", tb1, "up"],
        ], taken["commands"][b]
        assert {n: _qemu_pid(n) for n in names} == pids, "a pool VM was restarted, not taken"
        assert taps_in(netns) == {ta, tb0, tb1, pool_tap(a, 1)}
        spare = link(netns, pool_tap(a, 1))
        assert spare is not None and "UP" not in spare["flags"] and "master" not in spare, \
            "the spare pool tap is kept down and on no bridge (QEMU still holds it)"
        for n in names:
            for i, (tap, _, bridge, host) in enumerate(planned[n]):
                moved = link(netns, tap)
                assert moved is not None and moved["master"] == bridge
                assert "LOWER_UP" in moved["flags"]
                address = f"198.18.{octet + i}.{host.rsplit('.', 1)[1]}"
                ping = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address]
                deadline = time.monotonic() + 10
                while sh(*ping, check=False).returncode != 0:
                    assert time.monotonic() < deadline, f"{n} does not answer at {address}"
                    time.sleep(0.2)
        rc, out = serial.run(a, ["sh", "-c", "hostname; sysctl -n net.ipv4.ip_forward"], 10, 4096)
        assert (rc, out.split()) == (0, ["r1", "1"])
        assert run(take)["changed"] is False
        assert run(take, check=True)["changed"] is False

        gone = run({"uri": QEMU_URI, "state": "absent", "netns": netns, "domains": [
            {"name": a, "interfaces": [{"tap": ta, "mac": ma}]}, {"name": b}]})
        assert gone["changed"] is True
        assert all(lookup(conn, n) is None for n in names)
        assert not taps_in(netns) and not taps_in(None) & {ta, tb0, tb1}
    finally:
        for n in names:
            dom = lookup(conn, n)
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        conn.close()
        sh("ip", "netns", "delete", netns, check=False)
        for n in names:
            for tap, _, _, _ in planned[n]:
                sh("ip", "link", "delete", tap, check=False)


def test_a_taken_pool_vm_that_stopped_half_way_leaves_no_pool_tap() -> None:
    """A take that renamed none of its pool taps yet, then removed with the
    node's taps: the domain's pre-wired pool taps, and the spare taps a
    live migration gave it, are deleted too."""
    want = Want("vn-x-pool-1", "absent", None, netns="h1")
    pool = [pool_tap("vn-x-pool-1", i) for i in range(2)]
    have = Have(exists=True, state="running", spec=DomainSpec(
        name="vn-x-pool-1", interfaces=tuple(Nic(t, f"02:00:00:00:00:0{i}")
                                             for i, t in enumerate(pool))),
        taps={t: Tap(t, "h1") for t in [*pool, pool_tap("vn-y-pool-2", 0),
                                        spare_tap("vn-x-pool-1", 3), spare_tap("vn-y-pool-2", 3)]})
    assert plan(replace(want, spec=None), replace(have, spec=None), 1) == [
        ["libvirt", "destroy", "vn-x-pool-1"], ["libvirt", "undefine", "vn-x-pool-1"],
        *(["ip", "-n", "h1", "link", "del", "dev", t]
          for t in sorted([*pool, spare_tap("vn-x-pool-1", 3)]))]


def test_pool_tap_names_match_the_pool() -> None:
    from vnetlib.core import pool

    for domain in ("vn-labp1-pool-0a1b2c3d", "x"):
        assert [pool.pool_tap(domain, i) for i in range(4)] == [
            pool_tap(domain, i) for i in range(4)]
        assert len(pool.pool_tap(domain, 9)) <= 15


def test_a_failed_item_is_named(run: Runner, daemons: object) -> None:  # noqa: F811
    bad = run({"uri": QEMU_URI, "domains": [
        {"name": "vp-bad-1", "state": "running", "memory_mb": 4},
        {"name": "vp-bad-2", "state": "absent"}]}, fail=True)
    assert bad["failed_domains"] == ["vp-bad-1"]
    assert "vp-bad-1" in bad["msg"]


pytestmark = pytest.mark.e2e
