"""vnet.infra.vnet_domain taking over a pool VM, and several domains in one run.

Two pool VMs (no NICs, ACPI) are booted by one module run with a `domains`
list (in parallel); one of them is then taken for a virtual node: its NIC is
hot-plugged on a tap in a throwaway namespace's bridge and the guest is
reconfigured over its serial console, with no restart (same QEMU pid). The
guest then answers ping at the node's address, under the node's hostname.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

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


def test_pool_vm_taken_by_hotplug_and_serial_reconfig(run: Runner, daemons: object) -> None:  # noqa: F811
    image = build_image()
    prefix = "vp" + secrets.token_hex(3)
    netns, bridge = f"{prefix}-h1", "vbr0"
    names = [f"{prefix}-pool-a", f"{prefix}-pool-b"]
    tap = f"{prefix}t0"
    octet = secrets.randbelow(250) + 1
    mac = mac_for(prefix, "r1", "eth0")
    base = {"hypervisor": "qemu", "vcpus": 1, "memory_mb": 128, "kernel": str(image.kernel),
            "initrd": str(image.initrd), "pool": True}
    pool_line = kernel_cmdline(image, "pool", [], False)
    conn = libvirt.open(QEMU_URI)
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", netns, "link", "add", bridge, "type", "bridge")
        sh("ip", "-n", netns, "address", "add", f"198.18.{octet}.2/24", "dev", bridge)
        sh("ip", "-n", netns, "link", "set", bridge, "up")

        started = time.monotonic()
        booted = run({"uri": QEMU_URI, "accel": "tcg", "domains": [
            {**base, "name": n, "state": "running", "cmdline": pool_line,
             "ready_marker": "vnet-guest-ready pool"} for n in names]})
        print(f"two pool VMs booted in one run: {time.monotonic() - started:.1f} s")
        assert booted["changed"] is True
        assert sorted(booted["commands"]) == names
        for n in names:
            assert booted["commands"][n] == [["libvirt", "define", n], ["libvirt", "start", n]]
            assert conn.lookupByName(n).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        pid = _qemu_pid(names[0])
        assert pid is not None

        take = {**base, "name": names[0], "uri": QEMU_URI, "accel": "tcg", "state": "running",
                "cmdline": kernel_cmdline(image, "r1", [(mac, [f"198.18.{octet}.1/24"])], True),
                "interfaces": [{"tap": tap, "mac": mac, "bridge": bridge}], "netns": netns,
                "ready_marker": "vnet-guest-ready r1"}
        checked = run(take, check=True)
        assert checked["changed"] is True and link(None, tap) is None
        started = time.monotonic()
        taken = run(take)
        took = time.monotonic() - started
        print(f"module run that took the pool VM: {took:.2f} s")
        assert taken["commands"] == [
            ["libvirt", "define", names[0]],
            ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
            ["libvirt", "attach", names[0], tap],
            ["ip", "link", "set", "dev", tap, "netns", netns],
            ["ip", "-n", netns, "link", "set", "dev", tap, "master", bridge],
            ["ip", "-n", netns, "link", "set", "dev", tap, "up"],
            ["guest", "configure", names[0]],
        ], taken["commands"]
        assert _qemu_pid(names[0]) == pid, "the pool VM was restarted, not taken"
        moved = link(netns, tap)
        assert moved is not None and moved["master"] == bridge and "LOWER_UP" in moved["flags"]
        ping = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", f"198.18.{octet}.1"]
        deadline = time.monotonic() + 10
        while sh(*ping, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the taken pool VM does not answer ping"
            time.sleep(0.2)
        rc, out = serial.run(names[0], ["sh", "-c", "hostname; sysctl -n net.ipv4.ip_forward"],
                             10, 4096)
        assert (rc, out.split()) == (0, ["r1", "1"])
        assert run(take)["changed"] is False
        assert run(take, check=True)["changed"] is False

        gone = run({"uri": QEMU_URI, "domains": [
            {"name": names[0], "state": "absent", "netns": netns},
            {"name": names[1], "state": "absent"}]})
        assert gone["changed"] is True
        assert all(lookup(conn, n) is None for n in names)
        assert link(netns, tap) is None and link(None, tap) is None
    finally:
        for n in names:
            dom = lookup(conn, n)
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        conn.close()
        sh("ip", "netns", "delete", netns, check=False)
        sh("ip", "link", "delete", tap, check=False)


def test_a_failed_item_is_named(run: Runner, daemons: object) -> None:  # noqa: F811
    bad = run({"uri": QEMU_URI, "domains": [
        {"name": "vp-bad-1", "state": "running", "memory_mb": 4},
        {"name": "vp-bad-2", "state": "absent"}]}, fail=True)
    assert bad["failed_domains"] == ["vp-bad-1"]
    assert "vp-bad-1" in bad["msg"]


pytestmark = pytest.mark.e2e
