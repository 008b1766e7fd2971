"""vnet.infra.vnet_domain through ansible-playbook, against libvirt.

Two drivers: libvirt's test driver (``test:///default``), reached through
libvirtd as ``test+unix:///default`` so that its state outlives one module
run while the test holds a connection; and QEMU (``qemu:///system``) with a
real tap moved into a throwaway namespace and attached to a bridge there.
libvirtd and virtlogd are started here if they do not run (and then stopped).

Needs root, iproute2, libvirt (scripts/install-libvirt.sh) and the libvirt
bindings in the Python that runs the tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ansible_runner
import pytest

from vnetlib.vm import libvirtd
from vnetlib.vm.domain import domain_logs

libvirt = pytest.importorskip("libvirt")

ROOT = Path(__file__).resolve().parents[2]
BINDIR = Path(sys.executable).parent
TEST_URI = "test+unix:///default"
QEMU_URI = "qemu:///system"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or not libvirtd.available(),
        reason="needs root, iproute2 and libvirt (scripts/install-libvirt.sh)",
    ),
]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[libvirtd.Daemons]:
    d = libvirtd.Daemons(tmp_path_factory.mktemp("libvirtd"))
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collections path whose vnet.infra is this checkout."""
    base = tmp_path_factory.mktemp("collections")
    infra = base / "ansible_collections" / "vnet" / "infra"
    infra.mkdir(parents=True)
    for part in ("galaxy.yml", "meta", "plugins"):
        (infra / part).symlink_to(ROOT / part)
    return base


class Runner:
    """Runs vnet.infra.vnet_domain as one task of a playbook on localhost."""

    def __init__(self, collections: Path, workdir: Path) -> None:
        self.collections = collections
        self.workdir = workdir

    def __call__(self, args: dict, *, check: bool = False, fail: bool = False) -> dict:
        play = self.workdir / "play.yml"
        task = {"name": "domain", "vnet.infra.vnet_domain": args}
        play.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": [task]}]))
        inventory = self.workdir / "inventory.ini"
        inventory.write_text(
            f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        )
        (self.workdir / "runner").mkdir(exist_ok=True)
        runner = ansible_runner.run(
            private_data_dir=str(self.workdir / "runner"),
            playbook=str(play),
            inventory=str(inventory),
            cmdline="--diff" + (" --check" if check else ""),
            envvars={
                "PATH": f"{BINDIR}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
                "ANSIBLE_NOCOLOR": "1",
            },
            quiet=True,
            timeout=120,
        )
        results = [
            (e["event"] == "runner_on_failed", e["event_data"]["res"])
            for e in runner.events
            if e.get("event") in ("runner_on_ok", "runner_on_failed")
        ]
        assert len(results) == 1, runner.stdout.read()[-3000:]
        failed, result = results[0]
        assert failed == fail, json.dumps(result, indent=1)[-3000:]
        return dict(result)


@pytest.fixture
def run(collections: Path, tmp_path: Path) -> Runner:
    return Runner(collections, tmp_path)


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


@pytest.fixture
def test_conn(daemons: libvirtd.Daemons) -> Iterator[libvirt.virConnect]:
    """A connection that keeps the test driver's state alive between module runs."""
    conn = libvirt.open(TEST_URI)
    try:
        yield conn
    finally:
        conn.close()


def test_three_passes_on_the_test_driver(run: Runner, test_conn: libvirt.virConnect) -> None:
    name = "vt" + secrets.token_hex(3)
    args = {
        "name": name,
        "uri": TEST_URI,
        "state": "running",
        "memory_mb": 128,
        "vcpus": 2,
        "kernel": "/var/lib/vnet/vmlinuz",
        "initrd": "/var/lib/vnet/initrd.gz",
        "cmdline": "console=ttyS0 vnet.hostname=r1",
        "interfaces": [{"tap": f"{name}e0", "mac": "52:54:00:AB:CD:01"}],
    }
    try:
        first = run(args, check=True)
        assert first["changed"] is True
        assert first["commands"] == [["libvirt", "define", name], ["libvirt", "start", name]]
        assert first["diff"]["before"] == {"state": "absent"}
        assert first["diff"]["after"]["state"] == "running"
        assert lookup(test_conn, name) is None, "check mode defined the domain"

        assert run(args)["changed"] is True
        dom = lookup(test_conn, name)
        assert dom is not None and dom.isActive()
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "<cmdline>console=ttyS0 vnet.hostname=r1</cmdline>" in xml
        assert "52:54:00:ab:cd:01" in xml

        again = run(args, check=True)
        assert again["changed"] is False and again["commands"] == []
        assert run(args)["changed"] is False

        bigger = run({**args, "memory_mb": 192})
        assert bigger["commands"] == [
            ["libvirt", "define", name],
            ["libvirt", "destroy", name],
            ["libvirt", "start", name],
        ]
        assert bigger["diff"]["before"]["memory_mb"] == 128
        assert bigger["diff"]["after"]["memory_mb"] == 192
        assert dom.maxMemory() == 192 * 1024

        assert run({**args, "memory_mb": 192, "state": "paused"})["commands"] == [
            ["libvirt", "suspend", name]
        ]
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert run({**args, "memory_mb": 192, "state": "shutdown"})["changed"] is True
        assert not dom.isActive()
        assert run({**args, "memory_mb": 192, "state": "shutdown"})["changed"] is False

        gone = run({"name": name, "uri": TEST_URI, "state": "absent"})
        assert gone["commands"] == [["libvirt", "undefine", name]]
        assert lookup(test_conn, name) is None
        assert run({"name": name, "uri": TEST_URI, "state": "absent"})["changed"] is False
    finally:
        dom = lookup(test_conn, name)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def test_xen_pv_domain_three_passes_on_the_test_driver(
    run: Runner, test_conn: libvirt.virConnect
) -> None:
    """Xen runs nowhere here: the test driver takes the Xen PV definition and
    reports it back, which checks the module's round trip for hypervisor xen."""
    name = "vt" + secrets.token_hex(3)
    args = {
        "name": name,
        "uri": TEST_URI,
        "state": "running",
        "hypervisor": "xen",
        "kernel": "/var/lib/vnet/vmlinuz",
        "initrd": "/var/lib/vnet/initrd.gz",
        "cmdline": "console=hvc0",
        "interfaces": [{"tap": f"{name}e0", "mac": "00:16:3e:00:00:01"}],
    }
    try:
        assert run(args, check=True)["changed"] is True
        assert lookup(test_conn, name) is None
        applied = run(args)
        assert applied["changed"] is True and "accel" not in applied
        dom = lookup(test_conn, name)
        assert dom is not None and dom.isActive()
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "<domain type='xen'>" in xml and "machine='xenpv'>linux</type>" in xml
        assert "<target type='xen' port='0'/>" in xml
        assert run(args, check=True)["changed"] is False
        assert run({"name": name, "uri": TEST_URI, "state": "absent"})["changed"] is True
        assert lookup(test_conn, name) is None
    finally:
        dom = lookup(test_conn, name)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def test_bad_request_fails_naming_it(run: Runner, test_conn: libvirt.virConnect) -> None:
    result = run(
        {"name": "vtbad", "uri": TEST_URI, "cmdline": "quiet", "state": "present"}, fail=True
    )
    assert "initrd and cmdline need a kernel" in result["msg"]
    result = run(
        {"name": "vtbad", "uri": TEST_URI, "netns": "vt-no-such-ns", "state": "running"},
        fail=True,
    )
    assert "netns vt-no-such-ns does not exist" in result["msg"]
    assert lookup(test_conn, "vtbad") is None


def link(netns: str | None, dev: str) -> dict | None:
    argv = ["ip", *(["-n", netns] if netns else []), "-json", "-s", "link", "show", "dev", dev]
    proc = sh(*argv, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def test_qemu_domain_with_tap_in_a_netns(
    run: Runner, daemons: libvirtd.Daemons, tmp_path: Path
) -> None:
    prefix = "vt" + secrets.token_hex(3)
    netns, tap, bridge = f"{prefix}-h1", f"{prefix}t0", "vbr0"
    conn = libvirt.open(QEMU_URI)
    args = {
        "name": prefix,
        "uri": QEMU_URI,
        "state": "running",
        # TCG: under this machine's nested KVM the guest's boot ROM sends no frame.
        "accel": "tcg",
        "memory_mb": 64,
        "interfaces": [{"tap": tap, "mac": "52:54:00:00:5e:01", "bridge": bridge}],
        "netns": netns,
        "shutdown_timeout": 1,
    }
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", netns, "link", "add", bridge, "type", "bridge")
        sh("ip", "-n", netns, "link", "set", bridge, "up")

        assert run(args, check=True)["changed"] is True
        assert lookup(conn, prefix) is None and link(None, tap) is None

        started = time.monotonic()
        result = run(args)
        took = time.monotonic() - started
        assert result["commands"] == [
            ["libvirt", "define", prefix],
            ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
            ["libvirt", "start", prefix],
            ["ip", "link", "set", "dev", tap, "netns", netns],
            ["ip", "-n", netns, "link", "set", "dev", tap, "master", bridge],
            ["ip", "-n", netns, "link", "set", "dev", tap, "up"],
        ], result["commands"]
        dom = conn.lookupByName(prefix)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        print(f"module run that defined and started the domain: {took:.2f} s")

        assert link(None, tap) is None, "tap left in libvirtd's namespace"
        moved = link(netns, tap)
        assert moved is not None and moved["master"] == bridge
        # LOWER_UP: a process (QEMU) holds the tap's file descriptor.
        assert "LOWER_UP" in moved["flags"], moved
        # The guest's firmware sends DHCP requests from its NIC's boot ROM: QEMU
        # still writes to the tap after it moved.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            moved = link(netns, tap)
            assert moved is not None
            if moved["stats64"]["rx"]["packets"] > 0:
                break
            time.sleep(0.5)
        assert moved["stats64"]["rx"]["packets"] > 0, "no frame from the guest on the moved tap"

        assert run(args, check=True)["changed"] is False
        assert run(args)["changed"] is False

        # Shut down and start again: the tap goes back to libvirtd's namespace
        # for the start and into the netns after it.
        assert run({**args, "state": "shutdown"})["commands"] == [["libvirt", "shutdown", prefix]]
        assert not dom.isActive()
        again = run(args)
        assert again["commands"] == [
            ["ip", "-n", netns, "link", "set", "dev", tap, "netns", str(again["commands"][0][-1])],
            ["libvirt", "start", prefix],
            ["ip", "link", "set", "dev", tap, "netns", netns],
            ["ip", "-n", netns, "link", "set", "dev", tap, "master", bridge],
            ["ip", "-n", netns, "link", "set", "dev", tap, "up"],
        ], again["commands"]
        assert dom.isActive()
        assert "LOWER_UP" in (link(netns, tap) or {}).get("flags", [])

        gone = run({"name": prefix, "uri": QEMU_URI, "state": "absent", "netns": netns})
        assert gone["commands"] == [
            ["libvirt", "destroy", prefix],
            ["libvirt", "undefine", prefix],
            ["rm", "-f", *domain_logs(prefix)],
            ["ip", "-n", netns, "link", "del", "dev", tap],
        ]
        assert lookup(conn, prefix) is None
        assert not any(Path(log).exists() for log in domain_logs(prefix))
        assert link(netns, tap) is None and link(None, tap) is None
        assert link(netns, bridge) is not None
        assert (
            run({"name": prefix, "uri": QEMU_URI, "state": "absent", "netns": netns})["changed"]
            is False
        )
    finally:
        dom = lookup(conn, prefix)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        sh("ip", "netns", "delete", netns, check=False)
        sh("ip", "link", "delete", tap, check=False)


def cached_image() -> tuple[Path, Path] | None:
    """vmlinuz and initrd.gz of a guest image built by vnetlib.vm.image, if any."""
    cache = Path(os.environ.get("VNET_IMAGE_CACHE", "/var/cache/vnet/images"))
    for kernel in sorted(cache.glob("*/vmlinuz")):
        if (kernel.parent / "initrd.gz").exists():
            return kernel, kernel.parent / "initrd.gz"
    return None


def test_guest_image_answers_ping_over_the_moved_tap(
    run: Runner, daemons: libvirtd.Daemons
) -> None:
    image = cached_image()
    if image is None:
        pytest.skip("no guest image under /var/cache/vnet/images (vnetlib.vm.image.build_image)")
    from vnetlib.vm.image import CMDLINE_BASE, GuestImage, kernel_cmdline, mac_for

    prefix = "vt" + secrets.token_hex(3)
    netns, tap, bridge = f"{prefix}-h1", f"{prefix}t0", "vbr0"
    octet = secrets.randbelow(250) + 1
    mac = mac_for(prefix, "r1", "eth0")
    guest = GuestImage(kernel=image[0], initrd=image[1], key="", cmdline_base=CMDLINE_BASE)
    args = {
        "name": prefix,
        "uri": QEMU_URI,
        "state": "running",
        "memory_mb": 128,
        "kernel": str(image[0]),
        "initrd": str(image[1]),
        "cmdline": kernel_cmdline(guest, "r1", [(mac, [f"198.18.{octet}.1/24"])], False),
        "interfaces": [{"tap": tap, "mac": mac, "bridge": bridge}],
        "netns": netns,
    }
    conn = libvirt.open(QEMU_URI)
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", netns, "link", "add", bridge, "type", "bridge")
        sh("ip", "-n", netns, "address", "add", f"198.18.{octet}.2/24", "dev", bridge)
        sh("ip", "-n", netns, "link", "set", bridge, "up")
        started = time.monotonic()
        result = run(args)
        assert result["accel"] in ("kvm", "tcg")
        ping = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", f"198.18.{octet}.1"]
        deadline = time.monotonic() + 45
        while sh(*ping, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the guest did not answer ping in 45 s"
            time.sleep(0.2)
        print(f"accel {result['accel']}: guest answers ping {time.monotonic() - started:.1f} s")
        assert run(args)["changed"] is False
        run({"name": prefix, "uri": QEMU_URI, "state": "absent", "netns": netns})
        assert lookup(conn, prefix) is None and link(netns, tap) is None
    finally:
        dom = lookup(conn, prefix)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        sh("ip", "netns", "delete", netns, check=False)
        sh("ip", "link", "delete", tap, check=False)
