# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Want, have, plan for vnet's libvirt domains (private to the collection).

The first half is the domain model of ``vnetlib/vm/domain.py``, kept the same
(tests/unit/test_domain_xml.py compares the two): ``DomainSpec``,
``domain_xml`` and ``parse_domain``. The module cannot import vnetlib, which
need not be installed on a target.

The second half is pure planning: ``want`` comes from module parameters,
``have`` from libvirt (the domain's inactive XML and its state) and from
``ip -json link show`` here and in the substrate host's namespace, and
``plan`` returns the commands (argv lists) that turn one into the other.
``["libvirt", VERB, NAME]`` commands are calls on the libvirt connection, the
others run as programs. An empty list means nothing is to do.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
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
    return "%s/%s-serial.log" % (SERIAL_LOG_DIR, name)


def domain_logs(name: str) -> tuple[str, str]:
    """The domain's log files on its host: its serial console's, and libvirt's
    own (QEMU's command line and errors), which libvirt leaves behind."""
    return serial_log(name), "%s/%s.log" % (SERIAL_LOG_DIR, name)


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


# --------------------------------------------------------------------------
# Want, have, plan
# --------------------------------------------------------------------------

Command = list[str]
LIBVIRT = "libvirt"
GUEST = "guest"
IP = "ip"
NSENTER = "nsenter"
STATES = ("present", "absent", "running", "shutdown", "paused")
ACTIVE = ("running", "paused")


class PlanError(Exception):
    """A request that cannot be planned or carried out; names the object."""

    def __init__(self, msg: str, **details: object) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


@dataclass(frozen=True, slots=True)
class Want:
    """The domain as asked: ``spec`` is None for state absent without fields."""

    name: str
    state: str
    spec: DomainSpec | None
    kvm: bool = False
    netns: str | None = None
    bridges: dict[str, str | None] = field(default_factory=dict)
    pool: bool = False
    libvirt_pid: int | None = None

    @property
    def owns_taps(self) -> bool:
        """Whether the module makes, moves and deletes the domain's taps: with
        a netns to move them into, bridges to put them on, or a libvirtd that
        opens them in a namespace other than the module's."""
        return (self.netns is not None or self.libvirt_pid is not None
                or any(self.bridges.values()))


@dataclass(frozen=True, slots=True)
class Tap:
    """A tap device as ``ip -json -details link show`` reports it."""

    name: str
    # None: the module's namespace; a name under /run/netns; an int: the pid
    # of a process in libvirtd's namespace (when that is not the module's).
    netns: str | int | None
    master: str | None = None
    up: bool = False
    carrier: bool = False


@dataclass(frozen=True, slots=True)
class Have:
    """The domain as libvirt reports it, and the taps found here and in the netns."""

    exists: bool = False
    spec: DomainSpec | None = None
    kvm: bool = False
    uuid: str | None = None
    state: str = "shutoff"
    taps: dict[str, Tap] = field(default_factory=dict)
    netns_exists: bool = False
    bridges: frozenset[str] = frozenset()
    logs: tuple[str, ...] = ()  # which of domain_logs exist


def _opt(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def want_from_params(params: dict, *, kvm: bool) -> Want:
    """Want from the module's parameters; ``kvm`` is the accelerator already decided."""
    name = params["name"]
    state = params["state"]
    ifaces = params.get("interfaces")
    netns = _opt(params.get("netns"))
    bridges = {i["tap"]: _opt(i.get("bridge")) for i in ifaces or []}
    libvirt_pid = params.get("libvirt_pid")
    if state == "absent" and ifaces is None:
        return Want(name, state, None, netns=netns, libvirt_pid=libvirt_pid)
    try:
        spec = DomainSpec(
            name=name,
            hypervisor=params.get("hypervisor") or "qemu",
            vcpus=params.get("vcpus") or 1,
            memory_mb=params.get("memory_mb") or 256,
            kernel=_opt(params.get("kernel")),
            initrd=_opt(params.get("initrd")),
            cmdline=_opt(params.get("cmdline")),
            interfaces=tuple(Nic(i["tap"], str(i["mac"]).lower()) for i in ifaces or []),
            serial="pty" if params.get("serial", "pty") == "pty" else None,
            vnc=bool(params.get("vnc")),
            acpi=bool(params.get("pool")) and (params.get("hypervisor") or "qemu") == "qemu",
        )
    except DomainError as exc:
        raise PlanError(str(exc)) from None
    return Want(name, state, spec, kvm=kvm and spec.hypervisor == "qemu", netns=netns,
                bridges=bridges, pool=bool(params.get("pool")), libvirt_pid=libvirt_pid)


def domain_state(code: int) -> str:
    """libvirt's virDomainState as running, paused or shutoff."""
    # 1 running, 2 blocked, 4 shutting down; 3 paused, 7 pmsuspended.
    if code in (1, 2, 4):
        return "running"
    if code in (3, 7):
        return "paused"
    return "shutoff"


def parse_taps(text: str, netns: str | int | None) -> dict[str, Tap]:
    """Tap devices from ``ip -json -details link show`` (run where ``netns`` says)."""
    text = (text or "").strip()
    entries = json.loads(text) if text else []
    taps = {}
    for entry in entries:
        if (entry.get("linkinfo") or {}).get("info_kind") != "tun":
            continue
        flags = entry.get("flags") or []
        taps[entry["ifname"]] = Tap(
            name=str(entry["ifname"]),
            netns=netns,
            master=entry.get("master"),
            up="UP" in flags,
            carrier="LOWER_UP" in flags,
        )
    return taps


def parse_bridges(text: str) -> frozenset[str]:
    """Bridge names from ``ip -json -details link show``."""
    text = (text or "").strip()
    entries = json.loads(text) if text else []
    return frozenset(
        str(e["ifname"]) for e in entries if (e.get("linkinfo") or {}).get("info_kind") == "bridge"
    )


def _tap_names(want: Want, have: Have) -> list[str]:
    spec = want.spec if want.spec is not None else have.spec
    return [] if spec is None else [n.tap for n in spec.interfaces]


def ip_argv(where: str | int | None, *args: str) -> Command:
    """An C(ip) command run where ``where`` says (as `Tap.netns`)."""
    if isinstance(where, int):
        return [NSENTER, "-t", str(where), "-n", IP, *args]
    return [IP, *(["-n", where] if where else []), *args]


def _to(where: str | int | None, here_pid: int) -> str:
    """``where`` as C(ip link set ... netns) names it."""
    return str(here_pid) if where is None else str(where)


def _prepare_taps(want: Want, have: Have, here_pid: int) -> list[Command]:
    """Before a start: every tap exists in libvirtd's namespace, where libvirt
    opens it by name."""
    if not want.owns_taps:
        return []
    libvirtd = want.libvirt_pid
    commands: list[Command] = []
    for tap in _tap_names(want, have):
        found = have.taps.get(tap)
        if found is None:
            commands.append(ip_argv(libvirtd, "tuntap", "add", "dev", tap, "mode", "tap"))
        elif found.netns != libvirtd:
            commands.append(ip_argv(found.netns, "link", "set", "dev", tap, "netns",
                                    _to(libvirtd, here_pid)))
    return commands


def _attach_taps(want: Want, have: Have, here_pid: int, *, fresh: bool) -> list[Command]:
    """Every tap in the host's namespace (``want.netns``, or the module's),
    on its bridge, up; ``fresh`` after a (re)start, when they are all where
    libvirtd opened them. A tap ``have`` lacks is taken to be there too."""
    if not want.owns_taps:
        return []
    home = want.netns
    commands: list[Command] = []
    for tap in _tap_names(want, have):
        found = None if fresh else have.taps.get(tap)
        bridge = want.bridges.get(tap)
        if bridge is not None and bridge not in have.bridges:
            raise PlanError(
                f"domain {want.name}: bridge {bridge} for tap {tap} is not in "
                f"{'netns ' + home if home else 'this host'}; "
                "create it first (vnet.infra.vnet_link)",
                tap=tap,
                bridge=bridge,
            )
        where = want.libvirt_pid if found is None else found.netns
        if where != home:
            commands.append(ip_argv(where, "link", "set", "dev", tap, "netns", _to(home, here_pid)))
            found = Tap(tap, home)
        elif found is None:
            found = Tap(tap, home)
        if bridge is not None and found.master != bridge:
            commands.append(ip_argv(home, "link", "set", "dev", tap, "master", bridge))
        elif bridge is None and found.master is not None:
            commands.append(ip_argv(home, "link", "set", "dev", tap, "nomaster"))
        if not found.up:
            commands.append(ip_argv(home, "link", "set", "dev", tap, "up"))
    return commands


def _delete_taps(want: Want, have: Have) -> list[Command]:
    """The domain's taps, and any pre-wired pool tap of it left (a take that
    stopped half-way)."""
    if not want.owns_taps:
        return []
    commands = []
    names = _tap_names(want, have)
    names += sorted(t for t in have.taps
                    if (_is_pool_tap(want.name, t) or _is_spare_tap(want.name, t))
                    and t not in names)
    for tap in names:
        found = have.taps.get(tap)
        if found is not None:
            commands.append(ip_argv(found.netns, "link", "del", "dev", tap))
    return commands


def nic_xml(nic: Nic) -> str:
    """The <interface> of one NIC, as ``domain_xml`` writes it (for a hot-plug)."""
    iface = ET.Element("interface", type="ethernet")
    _sub(iface, "mac", address=nic.mac)
    _sub(iface, "target", dev=nic.tap, managed="no")
    _sub(iface, "model", type="virtio")
    return ET.tostring(iface, encoding="unicode")


POOL_TAP = "vq"
SPARE_TAP = "vs"


def pool_tap(domain: str, index: int) -> str:
    """The tap of a pool VM's ``index``-th pre-wired NIC: ``vq``, ten hex digits
    of the domain name's sha256, the index (vnetlib.core.pool names them so)."""
    return "%s%s%d" % (POOL_TAP, hashlib.sha256(domain.encode()).hexdigest()[:10], index)


def _is_pool_tap(domain: str, tap: str) -> bool:
    prefix = pool_tap(domain, 0)[:-1]
    return tap.startswith(prefix) and tap[len(prefix):].isdigit()


def _is_spare_tap(domain: str, tap: str) -> bool:
    """A throwaway tap a live migration gave a pool NIC the node does not use
    (``vs``, ten hex digits of the domain name's sha256, the index: named so
    by vnetlib.vm.migrate.spare_tap)."""
    prefix = SPARE_TAP + hashlib.sha256(domain.encode()).hexdigest()[:10]
    return tap.startswith(prefix) and tap[len(prefix):].isdigit()


def adoptable(want: Want, have: Have) -> bool:
    """Whether a running pool VM can become ``want`` without a restart: its
    NICs are its pre-wired pool NICs (or none), their taps are in the host's
    namespace, and the two differ only in command line and interfaces."""
    if not (want.pool and want.spec is not None and have.spec is not None):
        return False
    if want.state != "running" or not have.exists or have.state != "running":
        return False
    if have.kvm != want.kvm or want.spec.hypervisor != "qemu":
        return False
    for nic in have.spec.interfaces:
        found = have.taps.get(nic.tap)
        if not _is_pool_tap(want.name, nic.tap) or found is None or found.netns != want.netns:
            return False
    same = replace(have.spec, cmdline=want.spec.cmdline, interfaces=want.spec.interfaces)
    return same == want.spec and have.spec != want.spec


def _adopt(want: Want, have: Have, here_pid: int) -> list[Command]:
    """Take a pool VM: the new definition (for its next boot); its pre-wired
    NICs become the node's first NICs (their taps renamed to the node's,
    spare ones kept down and on no bridge until the domain goes: QEMU holding
    a deleted tap's descriptor spins on POLLERR), NICs beyond them are
    hot-plugged on fresh taps; the guest is reconfigured over its serial
    console from the new command line, the pool NICs' MACs standing in for the node's until its next boot; the
    taps go onto their bridges (the module runs the reconfiguration beside
    these moves: the guest needs only its NICs)."""
    if want.spec is None or have.spec is None or not want.owns_taps:
        raise PlanError("domain %s: a take needs the domain's fields and its taps" % want.name)
    name, netns, libvirtd = want.name, want.netns, want.libvirt_pid
    pool, nics = have.spec.interfaces, want.spec.interfaces
    reused = list(zip(pool, nics))
    extra = nics[len(pool):]
    commands: list[Command] = [[LIBVIRT, "define", name]]
    taps = {t: tap for t, tap in have.taps.items() if t not in {p.tap for p in pool}}
    for old, new in reused:
        commands.append(ip_argv(netns, "link", "set", "dev", old.tap, "down"))
        commands.append(ip_argv(netns, "link", "set", "dev", old.tap, "name", new.tap))
        taps[new.tap] = Tap(new.tap, netns)
    for spare in pool[len(nics):]:
        commands.append(ip_argv(netns, "link", "set", "dev", spare.tap, "down", "nomaster"))
    for nic in extra:
        if nic.tap not in taps:
            commands.append(ip_argv(libvirtd, "tuntap", "add", "dev", nic.tap, "mode", "tap"))
        elif taps[nic.tap].netns != libvirtd:
            commands.append(ip_argv(taps[nic.tap].netns, "link", "set", "dev", nic.tap, "netns",
                                    _to(libvirtd, here_pid)))
        taps.pop(nic.tap, None)
    commands += [[LIBVIRT, "attach", name, nic.tap] for nic in extra]
    commands.append([GUEST, "configure", name,
                     *("%s=%s" % (new.mac, old.mac) for old, new in reused)])
    commands += _attach_taps(want, replace(have, taps=taps), here_pid, fresh=False)
    return commands


def ip_head(argv: Command) -> tuple[str, ...] | None:
    """The part of an C(ip) command that ``ip -batch`` cannot take per line
    (``ip``, ``ip -n NS``, either after ``nsenter -t PID -n``); None for a
    command that must run on its own."""
    at = 4 if argv[:1] == [NSENTER] and argv[3:4] == ["-n"] else 0
    if len(argv) <= at or argv[at] != IP or any(
            not a or re.search(r"[\s'\"\\#]", a) for a in argv):
        return None
    return tuple(argv[:at + 3]) if argv[at + 1:at + 2] == ["-n"] else tuple(argv[:at + 1])


def ip_groups(commands: list[Command]) -> list[list[Command]]:
    """``commands`` in order, with consecutive C(ip) commands of the same
    namespace grouped (one ``ip [-n NS] -batch -`` each); every other command
    is a group of its own."""
    groups: list[list[Command]] = []
    for argv in commands:
        head = ip_head(argv)
        if head is not None and groups and ip_head(groups[-1][0]) == head:
            groups[-1].append(argv)
        else:
            groups.append([argv])
    return groups


def plan(want: Want, have: Have, here_pid: int) -> list[Command]:
    """The commands that turn ``have`` into ``want`` (empty when they match).

    Taps are vnet's when ``want.owns_taps``: created in libvirtd's namespace
    before a start (libvirt opens ``managed='no'`` taps by name there: this
    one, or ``want.libvirt_pid``'s), moved into the host's namespace (the
    netns, or this one) and attached to their bridges after it, moved back
    before the next start, deleted with the domain. ``here_pid`` names this
    namespace to ``ip link set ... netns``.
    """
    name = want.name
    if want.netns is not None and not have.netns_exists and want.state != "absent":
        raise PlanError(f"domain {name}: netns {want.netns} does not exist", netns=want.netns)
    if want.state == "absent":
        commands: list[Command] = []
        if have.exists and have.state in ACTIVE:
            commands.append([LIBVIRT, "destroy", name])
        if have.exists:
            commands.append([LIBVIRT, "undefine", name])
        if have.logs:
            commands.append(["rm", "-f", *have.logs])
        return commands + _delete_taps(want, have)
    if want.spec is None:
        raise PlanError(f"domain {name}: state {want.state} needs the domain's fields")
    if adoptable(want, have):
        return _adopt(want, have, here_pid)
    commands = []
    redefine = not have.exists or have.spec != want.spec or have.kvm != want.kvm
    if redefine:
        commands.append([LIBVIRT, "define", name])
    active = have.exists and have.state in ACTIVE
    if want.state == "present":
        return commands
    if want.state == "shutdown":
        if active:
            commands.append([LIBVIRT, "shutdown", name])
        return commands
    # A running domain whose tap is gone (its netns was deleted) has lost
    # that NIC for good: only a new start gives QEMU a new tap.
    lost = want.owns_taps and any(t not in have.taps for t in _tap_names(want, have))
    restart = active and (redefine or lost)
    if restart:
        commands.append([LIBVIRT, "destroy", name])
    if not active or restart:
        commands += _prepare_taps(want, have, here_pid)
        commands.append([LIBVIRT, "start", name])
        commands += _attach_taps(want, have, here_pid, fresh=True)
    else:
        commands += _attach_taps(want, have, here_pid, fresh=False)
    paused = have.state == "paused" and not restart
    if want.state == "running" and paused:
        commands.append([LIBVIRT, "resume", name])
    if want.state == "paused" and not paused:
        commands.append([LIBVIRT, "suspend", name])
    return commands


def view(spec: DomainSpec | None, state: str | None, kvm: bool, taps: dict[str, Tap]) -> dict:
    """A domain as a plain dict, for the module's diff."""
    if spec is None or state is None:
        return {"state": "absent"}
    return {
        "state": state,
        "hypervisor": spec.hypervisor,
        "accel": ("kvm" if kvm else "tcg") if spec.hypervisor == "qemu" else None,
        "vcpus": spec.vcpus,
        "memory_mb": spec.memory_mb,
        "kernel": spec.kernel,
        "initrd": spec.initrd,
        "cmdline": spec.cmdline,
        "serial": spec.serial,
        "vnc": spec.vnc,
        "acpi": spec.acpi,
        "interfaces": [
            {
                "tap": n.tap,
                "mac": n.mac,
                "netns": taps[n.tap].netns if n.tap in taps else None,
                "bridge": taps[n.tap].master if n.tap in taps else None,
            }
            for n in spec.interfaces
        ],
    }


def before_after(want: Want, have: Have) -> tuple[dict, dict]:
    """The diff's before and after."""
    before = view(have.spec, have.state if have.exists else None, have.kvm, have.taps)
    if want.state == "absent" or want.spec is None:
        return before, {"state": "absent"}
    state = {"present": have.state if have.exists else "shutoff", "shutdown": "shutoff"}.get(
        want.state, want.state
    )
    taps = dict(have.taps)
    if want.owns_taps and want.state in ACTIVE:
        for tap, bridge in want.bridges.items():
            taps[tap] = Tap(tap, want.netns, bridge, True, True)
    return before, view(want.spec, state, want.kvm, taps)
