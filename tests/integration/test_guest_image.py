"""The VM guest image: its cache key, its command line, and a real boot under
qemu with a tap that is moved into a namespace after qemu opened it (how the
lab places VM taps into substrate hosts)."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vnetlib.vm.image import (
    BUILDER_VERSION,
    FAILED_MARKER,
    GUEST_DIR,
    READY_MARKER,
    GuestImage,
    Package,
    build_image,
    cache_key,
    kernel_cmdline,
    mac_for,
    qemu_accel,
)

QEMU = "qemu-system-x86_64"
PACKAGES = [Package("linux-image-x", "x.deb", "a" * 64),
            Package("busybox-static", "b.deb", "b" * 64)]
FAKE_IMAGE = GuestImage(Path("/k"), Path("/i"), "k", "console=ttyS0 panic=-1")



# ---------------------------------------------------------------- no root


def test_cache_key_follows_guest_files_packages_and_version(tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    shutil.copytree(GUEST_DIR, guest)
    init = guest / "init"
    key = cache_key(PACKAGES, guest)
    assert key == cache_key(list(reversed(PACKAGES)), guest)

    os.utime(init, (1, 1))
    assert cache_key(PACKAGES, guest) == key, "a new mtime alone is no new input"

    original = init.read_bytes()
    init.write_bytes(original + b"\n# changed\n")
    assert cache_key(PACKAGES, guest) != key
    init.write_bytes(original)
    assert cache_key(PACKAGES, guest) == key

    init.chmod(0o644)
    assert cache_key(PACKAGES, guest) != key
    init.chmod(0o755)
    assert cache_key(PACKAGES, guest) == key

    (guest / "extra").write_text("x")
    assert cache_key(PACKAGES, guest) != key
    (guest / "extra").unlink()

    other = [PACKAGES[0], Package("busybox-static", "b.deb", "c" * 64)]
    assert cache_key(other, guest) != key
    assert cache_key(PACKAGES, guest, BUILDER_VERSION + "x") != key
    assert cache_key(PACKAGES, guest) == key


def test_mac_for_is_stable_local_unicast_and_distinct() -> None:
    mac = mac_for("vn1", "r1", "eth0")
    assert mac == mac_for("vn1", "r1", "eth0")
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac)
    macs = {mac_for(v, n, i) for v in ("vn1", "vn2") for n in ("r1", "r2")
            for i in ("eth0", "eth1")}
    assert len(macs) == 8


def test_kernel_cmdline_writes_every_setting() -> None:
    line = kernel_cmdline(FAKE_IMAGE, "r1",
                          [("02:AA:bb:cc:dd:ee", ["198.18.0.1/24", "2001:db8::1/64"]),
                           ("02:00:00:00:00:01", [])],
                          forwarding=True,
                          routes=[("198.19.0.0/16", "198.18.0.2"), ("default", "198.18.0.254")])
    assert line == ("console=ttyS0 panic=-1 vnet.hostname=r1"
                    " vnet.if=02:aa:bb:cc:dd:ee,198.18.0.1/24,2001:db8::1/64"
                    " vnet.if=02:00:00:00:00:01 vnet.forward=1"
                    " vnet.route=198.19.0.0/16,198.18.0.2 vnet.route=default,198.18.0.254")


@pytest.mark.parametrize(("hostname", "ifs", "routes", "named"), [
    ("r1", [("02:00:00:00:00:01", ["198.18.0.300/24"])], [], "198.18.0.300/24"),
    ("r1", [("02:00:00:00:00:01", ["198.18.0.1"])], [], "198.18.0.1"),
    ("r1", [("02:00:00:00:00:01", ["198.18.0.1/24 x=y"])], [], "198.18.0.1/24 x=y"),
    ("r1", [("03:00:00:00:00:01", [])], [], "03:00:00:00:00:01"),
    ("r1", [("02:00:00:00:00", [])], [], "02:00:00:00:00"),
    ("r1", [("02:00:00:00:00:01", []), ("02:00:00:00:00:01", [])], [], "02:00:00:00:00:01"),
    ("r 1", [], [], "r 1"),
    ("r1", [], [("198.18.0.1/24", "198.18.0.2")], "198.18.0.1/24"),
    ("r1", [], [("default", "gw")], "gw"),
])
def test_kernel_cmdline_rejects_bad_values_by_name(
        hostname: str, ifs: list[tuple[str, list[str]]], routes: list[tuple[str, str]],
        named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(named))):
        kernel_cmdline(FAKE_IMAGE, hostname, ifs, forwarding=False, routes=routes)


# ------------------------------------------------------------------ root


def _initrd_names(image: GuestImage) -> dict[str, int]:
    """Path -> mode of each entry of the image's newc initramfs."""
    data = gzip.decompress(image.initrd.read_bytes())
    names: dict[str, int] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            return names
        names[name] = mode
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3


@pytest.fixture(scope="module")
def image() -> GuestImage:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    started = time.monotonic()
    img = build_image()
    cold = time.monotonic() - started
    started = time.monotonic()
    again = build_image()
    warm = time.monotonic() - started
    assert again == img
    print(f"\nguest image {img.key[:12]}: first call {cold:.2f} s, second {warm:.3f} s,"
          f" kernel {img.kernel.stat().st_size} B, initrd {img.initrd.stat().st_size} B")
    assert warm < 0.5
    return img


@pytest.mark.e2e
def test_image_holds_busybox_init_and_virtio_modules(image: GuestImage) -> None:
    names = _initrd_names(image)
    assert names["init"] & 0o111
    assert "bin/busybox" in names and "dev/console" in names
    order = (Path(image.initrd).parent / "manifest.json").read_text()
    modules = [n.rsplit("/", 1)[1] for n in names if n.startswith("lib/modules/vnet/0")]
    assert [m.split("-", 1)[1] for m in sorted(modules)][-1] == "virtio_net.ko"
    for module in ("virtio_net", "virtio_pci", "net_failover", "failover", "virtio_ring"):
        assert f"{module}.ko" in order


@pytest.mark.e2e
def test_concurrent_cold_builds_make_one_image(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    results: list[GuestImage | BaseException] = []

    def build() -> None:
        try:
            results.append(build_image(tmp_path))
        except BaseException as e:  # handed to the main thread's assertion
            results.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    images = [r for r in results if isinstance(r, GuestImage)]
    assert len(images) == 2, results
    assert images[0] == images[1]
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert left == [images[0].key]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]


@dataclass(frozen=True, slots=True)
class Net:
    ns: str
    tap: str
    host: str
    guest: str


@pytest.fixture
def net() -> Iterator[Net]:
    """A throwaway namespace and a tap in the root namespace, removed after."""
    suffix = secrets.token_hex(3)
    octet = int(suffix[:2], 16) % 200 + 20
    made = Net(f"vntg-{suffix}", f"vntg{suffix}", f"198.18.{octet}.1", f"198.18.{octet}.2")
    try:
        subprocess.run(["ip", "netns", "add", made.ns], check=True)
        subprocess.run(["ip", "tuntap", "add", "dev", made.tap, "mode", "tap"], check=True)
        yield made
    finally:
        subprocess.run(["ip", "link", "del", made.tap], capture_output=True)
        subprocess.run(["ip", "-n", made.ns, "link", "del", made.tap], capture_output=True)
        subprocess.run(["ip", "netns", "del", made.ns], capture_output=True)


class Console:
    """The guest's serial console through qemu's unix socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(0.2)

    def run(self, command: str, timeout: float = 15) -> tuple[int, str]:
        """Run command in the guest's shell: its exit status and its output."""
        tag = secrets.token_hex(4)
        self.sock.sendall(f"{command}; echo vnet-rc-{tag}-$?-end\n".encode())
        done = re.compile(rf"vnet-rc-{tag}-(\d+)-end")
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = done.search(buf.decode(errors="replace"))
            if m:
                return int(m.group(1)), buf.decode(errors="replace")[:m.start()]
            with contextlib.suppress(TimeoutError):
                buf += self.sock.recv(65536)
        raise AssertionError(f"no answer to {command!r} in {timeout} s: {buf!r}")

    def close(self) -> None:
        self.sock.close()


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _wait_for(log: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if READY_MARKER in text or FAILED_MARKER in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"guest not ready (qemu rc {proc.poll()}); console:\n{text[-3000:]}")


def _qemu(image: GuestImage, cmdline: str, log: Path, sock: Path,
          devices: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [QEMU, "-machine", f"accel={qemu_accel()}", "-m", "128", "-nodefaults",
         "-no-user-config", "-display", "none", "-no-reboot", "-monitor", "none",
         "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
         *devices,
         "-chardev", f"socket,id=s0,path={sock},server=on,wait=off,logfile={log}",
         "-serial", "chardev:s0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory whose unix socket paths stay under 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="vntg-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


needs_qemu = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which(QEMU) is None,
    reason=f"needs root and {QEMU} (scripts/install-vm.sh)")


@pytest.mark.e2e
@needs_qemu
def test_guest_reports_an_interface_it_cannot_find(image: GuestImage, short_tmp: Path) -> None:
    missing = mac_for("test-vnet", "r9", "eth7")
    cmdline = kernel_cmdline(image, "r9", [(missing, ["198.18.0.2/24"])], forwarding=False)
    proc = _qemu(image, cmdline, short_tmp / "log", short_tmp / "sock", [])
    try:
        text = _wait_for(short_tmp / "log", proc, timeout=40)
        assert f"{FAILED_MARKER} r9; no interface with MAC {missing}" in text, text[-2000:]
        assert f"{READY_MARKER} r9" not in text
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.e2e
@needs_qemu
def test_a_guest_whose_init_dies_makes_qemu_exit(image: GuestImage, short_tmp: Path) -> None:
    cmdline = image.cmdline_base + " rdinit=/no-such-init"
    proc = _qemu(image, cmdline, short_tmp / "log", short_tmp / "sock", [])
    try:
        assert proc.wait(timeout=40) == 0
        assert "panic" in (short_tmp / "log").read_text(errors="replace").lower()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.e2e
@needs_qemu
def test_guest_boots_configures_its_interface_and_pings_through_moved_tap(
        image: GuestImage, net: Net, short_tmp: Path) -> None:
    mac = mac_for("test-vnet", "r1", "eth0")
    cmdline = kernel_cmdline(image, "r1", [(mac, [f"{net.guest}/24"])], forwarding=True,
                             routes=[("198.19.0.0/16", net.host)])
    log, sock = short_tmp / "console.log", short_tmp / "console.sock"
    started = time.monotonic()
    proc = _qemu(image, cmdline, log, sock,
                 ["-netdev", f"tap,id=n0,ifname={net.tap},script=no,downscript=no",
                  "-device", f"virtio-net-pci,netdev=n0,mac={mac}"])
    console: Console | None = None
    try:
        text = _wait_for(log, proc, timeout=40)
        boot = time.monotonic() - started
        print(f"\nboot to {READY_MARKER} ({qemu_accel()}): {boot:.2f} s")
        assert f"{READY_MARKER} r1" in text, text[-3000:]

        # qemu holds the tap's fd; the tap now moves to the namespace.
        _ip("link", "set", net.tap, "netns", net.ns)
        _ip("-n", net.ns, "addr", "add", f"{net.host}/24", "dev", net.tap)
        _ip("-n", net.ns, "link", "set", net.tap, "up")
        assert "LOWER_UP" in _ip("-n", net.ns, "link", "show", net.tap)
        assert proc.poll() is None

        ping = subprocess.run(["ip", "netns", "exec", net.ns, "ping", "-c", "2", "-W", "3",
                               net.guest], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr

        console = Console(sock)
        console.run("true")
        rc, out = console.run("hostname")
        assert rc == 0 and "r1" in out.split()
        rc, out = console.run("cat /sys/class/net/eth0/address /sys/class/net/eth0/carrier")
        assert rc == 0 and mac in out and out.split()[-1] == "1"
        rc, out = console.run("ip -o addr show eth0; ip route; sysctl -n net.ipv4.ip_forward")
        assert f"{net.guest}/24" in out and f"198.19.0.0/16 via {net.host}" in out
        assert out.split()[-1] == "1"
        rc, out = console.run(f"ping -c 2 -W 3 {net.host}")
        assert rc == 0, out
    finally:
        if console is not None:
            console.close()
        proc.kill()
        proc.wait(timeout=10)
