"""The guest image of VM virtual nodes: a Debian cloud kernel and an initramfs
of busybox, the virtio modules and vnet's /init (vnetlib/vm/guest/init).

Both come from Debian's packages, fetched with `apt-get download` (so apt's
package lists must be there: scripts/install-vm.sh). The image is cached under
/var/cache/vnet/images/<key>/ ($VNET_IMAGE_CACHE), where key is a sha256 over
the two packages' file hashes (from apt, before any download), the guest files
and BUILDER_VERSION: a warm call asks apt for the hashes and returns. A build
runs under a per-key lock, into a temporary directory renamed into place, so
concurrent builds of one key build once and never see half an image.

The guest configures itself from the kernel command line (kernel_cmdline):
hostname, one address set per interface matched by MAC (mac_for), forwarding,
static routes; it prints `vnet-guest-ready <hostname>` on ttyS0 when done.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUILDER_VERSION = "1"
"""Part of the cache key: bump it whenever the image's build changes."""

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
DEFAULT_CACHE = Path("/var/cache/vnet/images")
GUEST_DIR = Path(__file__).resolve().parent / "guest"

WANTED_MODULES = ("virtio_pci", "virtio_net")
"""The guest's drivers; their dependencies come along, built-in ones stay out."""

CMDLINE_BASE = "console=ttyS0 panic=-1 quiet no_timer_check"
"""panic=-1 reboots at once on a panic; qemu's -no-reboot turns that into an exit.
no_timer_check: a TCG guest starved of CPU (a loaded host) fails the kernel's
IO-APIC timer check at boot ("8254 timer not connected", then a panic), as
virtual machines often do; the check finds nothing wrong on QEMU's machine."""

READY_MARKER = "vnet-guest-ready"
FAILED_MARKER = "vnet-guest-failed"
MAX_CMDLINE = 2047
"""x86's COMMAND_LINE_SIZE less its NUL."""

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ImageError(RuntimeError):
    """The image could not be built: apt, a package or the kernel was not as expected."""


@dataclass(frozen=True, slots=True)
class GuestImage:
    kernel: Path
    initrd: Path
    key: str
    cmdline_base: str


@dataclass(frozen=True, slots=True)
class Package:
    """A Debian package as apt would download it now."""

    name: str
    filename: str
    sha256: str


def mac_for(vnet_id: str, node: str, ifname: str) -> str:
    """A stable, locally administered unicast MAC for one interface of a
    virtual node (02: then 40 bits of a sha256 over the three ids)."""
    digest = hashlib.sha256(f"{vnet_id}\0{node}\0{ifname}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def kernel_cmdline(image: GuestImage, hostname: str,
                   interfaces: Sequence[tuple[str, Sequence[str]]],
                   forwarding: bool,
                   routes: Sequence[tuple[str, str]] = (),
                   mtus: Mapping[str, int] | None = None) -> str:
    """The kernel command line that makes the guest configure itself.

    interfaces: (MAC, addresses with prefix) per interface; routes: (destination
    prefix or "default", gateway); mtus: the MTU of an interface, by MAC, where
    it is not 1500 (links tunnelled between hosts). Raises ValueError naming
    the bad value."""
    if not _HOSTNAME.match(hostname):
        raise ValueError(f"bad hostname {hostname!r}")
    parts = [image.cmdline_base, f"vnet.hostname={hostname}"]
    seen: set[str] = set()
    for mac, addrs in interfaces:
        norm = _check_mac(mac)
        if norm in seen:
            raise ValueError(f"MAC {mac!r} given twice")
        seen.add(norm)
        mtu = (mtus or {}).get(mac)
        if mtu is not None and not 576 <= mtu <= 9000:
            raise ValueError(f"MTU {mtu} of {mac} is out of 576..9000")
        extra = [] if mtu is None else [f"mtu={mtu}"]
        parts.append("vnet.if=" + ",".join([norm, *extra,
                                             *(_check_addr(a, mac) for a in addrs)]))
    parts.append(f"vnet.forward={int(forwarding)}")
    for dst, via in routes:
        parts.append(f"vnet.route={_check_route(dst, via)}")
    line = " ".join(parts)
    if len(line) > MAX_CMDLINE:
        raise ValueError(f"kernel command line of {len(line)} characters, more than {MAX_CMDLINE}")
    return line


def _check_mac(mac: str) -> str:
    norm = mac.lower()
    if not _MAC.match(norm) or int(norm[:2], 16) & 1:
        raise ValueError(f"bad MAC {mac!r}: want a unicast xx:xx:xx:xx:xx:xx")
    return norm


def _check_addr(addr: str, mac: str) -> str:
    try:
        if "/" not in addr:
            raise ValueError("no prefix length")
        iface = ipaddress.ip_interface(addr)
    except ValueError as e:
        raise ValueError(f"bad address {addr!r} for interface {mac}: {e}") from None
    return str(iface)


def _check_route(dst: str, via: str) -> str:
    try:
        gateway = ipaddress.ip_address(via)
    except ValueError:
        raise ValueError(f"bad gateway {via!r} for route {dst}") from None
    if dst == "default":
        return f"default,{gateway}"
    try:
        net = ipaddress.ip_network(dst)
    except ValueError as e:
        raise ValueError(f"bad route destination {dst!r}: {e}") from None
    if net.version != gateway.version:
        raise ValueError(f"route {dst} via {via}: address families differ")
    return f"{net},{gateway}"


# ---------------------------------------------------------------- cache key


def guest_files(guest_dir: Path = GUEST_DIR) -> list[Path]:
    return sorted(p for p in guest_dir.rglob("*") if p.is_file())


def cache_key(packages: Iterable[Package], guest_dir: Path = GUEST_DIR,
              version: str = BUILDER_VERSION) -> str:
    """sha256 over the builder's version, the packages' file hashes and each
    guest file's path, mode bits and content."""
    h = hashlib.sha256(f"vnet-guest-image\0{version}\0".encode())
    for pkg in sorted(packages, key=lambda p: p.name):
        h.update(f"pkg\0{pkg.name}\0{pkg.sha256}\0".encode())
    for path in guest_files(guest_dir):
        rel = path.relative_to(guest_dir).as_posix()
        mode = path.stat().st_mode & 0o777
        h.update(f"file\0{rel}\0{mode:o}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("VNET_IMAGE_CACHE", DEFAULT_CACHE))


# -------------------------------------------------------------------- apt


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True,
                             timeout=600)
    except FileNotFoundError as e:
        raise ImageError(f"{cmd[0]} not found: {e}") from None
    except subprocess.CalledProcessError as e:
        raise ImageError(f"{' '.join(cmd)} failed ({e.returncode}): {e.stderr.strip()}"
                         " (apt's lists missing? run scripts/install-vm.sh)") from None
    return out.stdout


def kernel_package() -> str:
    """The concrete kernel package that the cloud meta-package depends on now."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise ImageError(f"{KERNEL_META_PACKAGE} depends on no linux-image package")


def resolve_packages() -> list[Package]:
    """What `apt-get download` would fetch for the kernel and busybox, with
    hashes, without downloading."""
    names = [kernel_package(), BUSYBOX_PACKAGE]
    with tempfile.TemporaryDirectory(prefix="vnet-apt-") as empty:
        out = _run(["apt-get", "download", "--print-uris", *names], cwd=Path(empty))
    found: dict[str, Package] = {}
    for line in out.splitlines():
        m = re.match(r"^'[^']*' (\S+) \d+ SHA256:([0-9a-f]{64})$", line.strip())
        if m:
            filename = m.group(1)
            name = filename.split("_", 1)[0]
            found[name] = Package(name, filename, m.group(2))
    missing = [n for n in names if n not in found]
    if missing:
        raise ImageError(f"apt gives no download for {missing}: {out.strip()!r}")
    return [found[n] for n in names]


APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"))


def apt_fingerprint(dirs: Sequence[Path] = APT_STATE) -> str:
    """What apt's answers depend on, by file name, size and mtime: its lists
    (apt-get update rewrites them) and its configuration."""
    h = hashlib.sha256()
    for d in dirs:
        for path in sorted(d.rglob("*")) if d.is_dir() else ():
            if path.is_file() and "partial" not in path.parts and path.name != "lock":
                st = path.stat()
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _resolve_remembered(root: Path) -> list[Package]:
    """resolve_packages, remembered in the cache until apt's state changes:
    this machine's apt rebuilds its cache on every call (about 0.6 s each)."""
    memo = root / ".apt-resolution.json"
    fingerprint = apt_fingerprint()
    try:
        data = json.loads(memo.read_text())
        if data["fingerprint"] == fingerprint:
            return [Package(**p) for p in data["packages"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    packages = resolve_packages()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=memo.name, dir=root)
    with os.fdopen(fd, "w") as f:
        json.dump({"fingerprint": fingerprint, "packages": [
            {"name": p.name, "filename": p.filename, "sha256": p.sha256} for p in packages]}, f)
    os.replace(tmp, memo)
    return packages


def _download(packages: Sequence[Package], into: Path) -> dict[str, Path]:
    _run(["apt-get", "download", "-o", "APT::Sandbox::User=root",
          *(p.name for p in packages)], cwd=into)
    paths = {}
    for pkg in packages:
        path = into / pkg.filename
        if not path.is_file():
            raise ImageError(f"apt-get download left no {pkg.filename}")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != pkg.sha256:
            raise ImageError(f"{pkg.filename}: sha256 {got}, apt said {pkg.sha256}")
        paths[pkg.name] = path
    return paths


# ------------------------------------------------------------------ build


def build_image(cache: Path | None = None) -> GuestImage:
    """The guest image for the packages apt offers now: from the cache, or
    built into it."""
    root = cache if cache is not None else cache_root()
    packages = _resolve_remembered(root)
    key = cache_key(packages)
    final = root / key
    if _complete(final):
        return _image(final, key)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):
        if _complete(final):
            return _image(final, key)
        for stale in [*root.glob(f".build-{key[:12]}-*"), final]:
            shutil.rmtree(stale, ignore_errors=True)  # a killed build, a damaged image
        work = Path(tempfile.mkdtemp(prefix=f".build-{key[:12]}-", dir=root))
        try:
            _build_into(work, key, packages)
            work.chmod(0o755)  # mkdtemp's 0700 would shut out qemu run as another user
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _image(final, key)


def _complete(d: Path) -> bool:
    return (d / "manifest.json").is_file()


def _image(d: Path, key: str) -> GuestImage:
    return GuestImage(kernel=d / "vmlinuz", initrd=d / "initrd.gz", key=key,
                      cmdline_base=CMDLINE_BASE)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_into(work: Path, key: str, packages: Sequence[Package]) -> None:
    """Fetch, check (the downloads must hash as the key says), unpack, assemble."""
    started = time.monotonic()
    src = work / "src"
    src.mkdir()
    debs = _download(packages, src)
    kernel_dir, busybox_dir = src / "kernel", src / "busybox"
    _run(["dpkg-deb", "-x", str(debs[packages[0].name]), str(kernel_dir)])
    _run(["dpkg-deb", "-x", str(debs[BUSYBOX_PACKAGE]), str(busybox_dir)])

    vmlinuz = _one(kernel_dir.glob("boot/vmlinuz-*"), "vmlinuz")
    moddir = _one(kernel_dir.glob("lib/modules/*"), "lib/modules/<version>")
    modules = module_closure(moddir, WANTED_MODULES)
    busybox = busybox_dir / "bin" / "busybox"
    if not busybox.is_file():
        raise ImageError(f"{BUSYBOX_PACKAGE} has no bin/busybox")

    shutil.copyfile(vmlinuz, work / "vmlinuz")
    initrd = _initramfs(busybox, modules)
    (work / "initrd.gz").write_bytes(initrd)
    manifest = {
        "key": key,
        "builder_version": BUILDER_VERSION,
        "packages": {p.name: {"file": p.filename, "sha256": p.sha256} for p in packages},
        "kernel_release": moddir.name,
        "modules": [m.name for m in modules],
        "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
        "build_seconds": round(time.monotonic() - started, 2),
    }
    shutil.rmtree(src)
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _one(paths: Iterable[Path], what: str) -> Path:
    found = list(paths)
    if len(found) != 1:
        raise ImageError(f"kernel package: expected one {what}, found {found}")
    return found[0]


def module_closure(moddir: Path, wanted: Sequence[str]) -> list[Path]:
    """The .ko files that `wanted` need, dependencies first; modules that the
    kernel has built in (modules.builtin) are left out. The package has no
    modules.dep (depmod runs at install), so dependencies are read from each
    module's .modinfo depends= field."""
    builtin = {Path(line).stem.replace("-", "_")
               for line in (moddir / "modules.builtin").read_text().split()}
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p
               for p in moddir.rglob("*.ko")}
    order: list[Path] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in builtin or name in visiting:
            return
        visiting.add(name)
        path = by_name.get(name)
        if path is None:
            raise ImageError(f"module {name} neither built in nor in {moddir}")
        for dep in _depends(path):
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def _depends(ko: Path) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko.read_bytes())
    return [d for d in m.group(1).decode().split(",") if d] if m else []


# -------------------------------------------------------------- initramfs


def _initramfs(busybox: Path, modules: Sequence[Path]) -> bytes:
    """A gzip'd newc cpio, byte for byte the same for the same inputs."""
    archive = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "lib/modules/vnet", "proc",
              "root", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin"):
        archive.add(d, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    archive.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    names = []
    for i, ko in enumerate(modules):
        name = f"{i:02d}-{ko.name}"
        names.append(name)
        archive.add(f"lib/modules/vnet/{name}", stat.S_IFREG | 0o644, ko.read_bytes())
    archive.add("lib/modules/vnet/order", stat.S_IFREG | 0o644,
                "".join(n + "\n" for n in names).encode())
    for path in guest_files():
        rel = path.relative_to(GUEST_DIR).as_posix()
        archive.add(rel, stat.S_IFREG | (path.stat().st_mode & 0o777), path.read_bytes())
    return gzip.compress(archive.finish(), compresslevel=9, mtime=0)


class _Cpio:
    """newc ("070701") cpio writer: uid, gid and mtime 0, inodes in order."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 0

    def add(self, name: str, mode: int, data: bytes = b"",
            rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        nlink = 2 if stat.S_ISDIR(mode) else 1
        self._entry(name, mode, data, self._ino, nlink, rdev)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", 0, 1, (0, 0))
        return self._buf.getvalue()

    def _entry(self, name: str, mode: int, data: bytes, ino: int, nlink: int,
               rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self._write(header + encoded)
        self._write(data)

    def _write(self, chunk: bytes) -> None:
        self._buf.write(chunk)
        self._buf.write(b"\0" * (-self._buf.tell() % 4))


def qemu_accel() -> str:
    """"kvm" where KVM can run a guest, else "tcg"; $VNET_QEMU_ACCEL overrides.

    An openable /dev/kvm is not enough: on a nested machine without
    virtualisation flags in /proc/cpuinfo (this one) KVM accepts the guest and
    then hangs it, so qemu's own fallback (accel=kvm:tcg) never falls back."""
    forced = os.environ.get("VNET_QEMU_ACCEL")
    if forced:
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    return "kvm" if re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) else "tcg"


def image_size(image: GuestImage) -> Mapping[str, int]:
    return {"kernel": image.kernel.stat().st_size, "initrd": image.initrd.stat().st_size}
