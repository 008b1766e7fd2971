"""libvirt domain definitions for virtual nodes of kind qemu and xen (pure).

A ``DomainSpec`` is what vnet decides about a VM; ``domain_xml`` renders it as
libvirt domain XML, and ``parse_domain`` reads a domain's XML (as libvirt
reports it, with all the defaults it adds) back into the same record, so
"does the live domain match?" is one equality test.

QEMU guests boot a kernel and initramfs directly (``-kernel/-initrd/-append``)
when ``kernel`` is set, or the BIOS otherwise; Xen guests are paravirtualized
(PV) and always boot a kernel. Every NIC is ``<interface type='ethernet'>``
with a tap vnet creates itself (``managed='no'``): libvirt opens it in its
own network namespace, and vnet then moves it into the substrate host's
namespace and attaches it there to the link's bridge.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

Hypervisor = Literal["qemu", "xen"]
HYPERVISORS: tuple[Hypervisor, ...] = ("qemu", "xen")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Linux interface names: at most 15 bytes, no '/', ':' or blanks.
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
KIB_PER_MIB = 1024


class DomainError(ValueError):
    """A domain description that cannot be rendered or read; names the bad value."""


@dataclass(frozen=True, slots=True)
class Nic:
    """One network interface of a guest: the host's tap and the guest's MAC."""

    tap: str
    mac: str

    def __post_init__(self) -> None:
        if not IFNAME.match(self.tap):
            raise DomainError(f"tap name {self.tap!r} is not a valid interface name")
        if not MAC.match(self.mac):
            raise DomainError(f"MAC {self.mac!r} is not six lower-case hex pairs")


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """What vnet decides about one VM (a virtual node of kind qemu or xen)."""

    name: str
    hypervisor: Hypervisor = "qemu"
    vcpus: int = 1
    memory_mb: int = 256
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    interfaces: tuple[Nic, ...] = ()
    serial: Literal["pty"] | None = "pty"
    vnc: bool = False
    acpi: bool = False  # QEMU: ACPI PCI hotplug, for pool VMs that get their NICs when taken

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise DomainError(f"domain name {self.name!r} is not valid")
        if self.hypervisor not in HYPERVISORS:
            raise DomainError(
                f"domain {self.name}: hypervisor {self.hypervisor!r} is not qemu or xen"
            )
        if self.vcpus < 1 or self.memory_mb < 16:
            raise DomainError(
                f"domain {self.name}: needs at least 1 vCPU and 16 MiB "
                f"(got {self.vcpus}, {self.memory_mb})"
            )
        if self.kernel is None and (self.initrd is not None or self.cmdline is not None):
            raise DomainError(f"domain {self.name}: initrd and cmdline need a kernel")
        if self.hypervisor == "xen" and self.kernel is None:
            raise DomainError(f"domain {self.name}: a Xen PV guest needs a kernel")
        if self.serial not in (None, "pty"):
            raise DomainError(f"domain {self.name}: serial {self.serial!r} is not 'pty'")
        taps = [n.tap for n in self.interfaces]
        if len(set(taps)) != len(taps):
            raise DomainError(f"domain {self.name}: tap names repeat: {taps}")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


def serial_log(name: str) -> str:
    """Where a domain's serial console output is logged on its host."""
    return f"{SERIAL_LOG_DIR}/{name}-serial.log"


def domain_logs(name: str) -> tuple[str, str]:
    """The domain's log files on its host: its serial console's, and libvirt's
    own (QEMU's command line and errors), which libvirt leaves behind."""
    return serial_log(name), f"{SERIAL_LOG_DIR}/{name}.log"


def domain_xml(spec: DomainSpec, *, kvm: bool = False, uuid: str | None = None) -> str:
    """libvirt domain XML for ``spec``; ``kvm`` picks type kvm over TCG (QEMU only).

    ``uuid`` is needed to redefine an existing domain: libvirt refuses a
    definition of the same name with another (or a newly generated) UUID.
    """
    xen = spec.hypervisor == "xen"
    root = ET.Element("domain", type="xen" if xen else ("kvm" if kvm else "qemu"))
    _sub(root, "name", spec.name)
    if uuid is not None:
        _sub(root, "uuid", uuid)
    _sub(root, "memory", str(spec.memory_mb), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    os_ = _sub(root, "os")
    if xen:
        _sub(os_, "type", "linux", arch="x86_64", machine="xenpv")
    else:
        _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel is not None:
        _sub(os_, "kernel", spec.kernel)
        if spec.initrd is not None:
            _sub(os_, "initrd", spec.initrd)
        if spec.cmdline is not None:
            _sub(os_, "cmdline", spec.cmdline)
    elif not xen:
        _sub(os_, "boot", dev="network")
    if spec.acpi and not xen:
        _sub(_sub(root, "features"), "acpi")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for nic in spec.interfaces:
        iface = _sub(devices, "interface", type="ethernet")
        _sub(iface, "mac", address=nic.mac)
        _sub(iface, "target", dev=nic.tap, managed="no")
        if not xen:
            _sub(iface, "model", type="virtio")
    if spec.serial == "pty":
        if xen:
            console = _sub(devices, "console", type="pty")
            _sub(console, "target", type="xen", port="0")
        else:
            serial = _sub(devices, "serial", type="pty")
            # Kept by virtlogd whether or not a console is attached: the guest's
            # boot messages, and its ready marker, are never lost.
            _sub(serial, "log", file=serial_log(spec.name), append="off")
            _sub(serial, "target", port="0")
            console = _sub(devices, "console", type="pty")
            _sub(console, "target", type="serial", port="0")
    if spec.vnc:
        graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes")
        _sub(graphics, "listen", type="address", address="127.0.0.1")
    if not xen:
        _sub(devices, "memballoon", model="none")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


_UNITS = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "kb": 1000 / 1024,
    "k": 1,
    "kib": 1,
    "mb": 1000**2 / 1024,
    "m": 1024,
    "mib": 1024,
    "gb": 1000**3 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
}


def _memory_mb(element: ET.Element | None, name: str) -> int:
    if element is None or not (element.text or "").strip():
        raise DomainError(f"domain {name}: no <memory>")
    unit = element.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise DomainError(f"domain {name}: unknown memory unit {unit!r}")
    return round(int(element.text or "0") * _UNITS[unit] / KIB_PER_MIB)


def _text(root: ET.Element, path: str) -> str | None:
    element = root.find(path)
    return None if element is None or element.text is None else element.text


def parse_domain(xml: str) -> tuple[DomainSpec, bool]:
    """(spec, kvm) from a domain's XML; raises DomainError on XML vnet cannot have made."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainError(f"domain XML does not parse: {exc}") from None
    name = _text(root, "name") or ""
    kind = root.get("type", "")
    if kind not in ("qemu", "kvm", "xen", "test"):
        raise DomainError(f"domain {name}: type {kind!r} is not qemu, kvm or xen")
    os_type = _text(root, "os/type")
    xen = kind == "xen" or (kind == "test" and os_type in ("linux", "xen"))
    nics = []
    for iface in root.findall("devices/interface"):
        target = iface.find("target")
        mac = iface.find("mac")
        nics.append(
            Nic(
                tap="" if target is None else target.get("dev", ""),
                mac="" if mac is None else mac.get("address", "").lower(),
            )
        )
    ptys = root.findall("devices/serial") + root.findall("devices/console")
    spec = DomainSpec(
        name=name,
        hypervisor="xen" if xen else "qemu",
        vcpus=int(_text(root, "vcpu") or "1"),
        memory_mb=_memory_mb(root.find("memory"), name),
        kernel=_text(root, "os/kernel"),
        initrd=_text(root, "os/initrd"),
        cmdline=_text(root, "os/cmdline"),
        interfaces=tuple(nics),
        serial="pty" if any(e.get("type") == "pty" for e in ptys) else None,
        vnc=root.find("devices/graphics[@type='vnc']") is not None,
        acpi=not xen and root.find("features/acpi") is not None,
    )
    return spec, kind == "kvm"
