#!/usr/bin/python
# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vnet_domain
short_description: Manage a libvirt domain that realizes a VM virtual node of vnet
version_added: 0.1.0
description:
  - Defines, starts, pauses, shuts down or removes a libvirt domain (QEMU, or Xen
    PV) for a virtual node of kind qemu or xen, booting a kernel and initramfs
    directly, or the network when no O(kernel) is given.
  - Reads the domain's inactive XML into the same record the parameters make,
    compares the two, and runs only the steps needed; returns them in
    RV(commands). A changed definition of a running domain restarts it with
    O(state=running) or O(state=paused); O(state=present) only redefines it.
  - With O(netns), a bridge in O(interfaces), or a libvirtd in another network
    namespace (O(libvirt_pid)), the module also owns the domain's taps.
    libvirt opens each tap (C(<interface type='ethernet'>),
    C(<target managed='no'>)) by name in its own network namespace, so the
    module creates it there before a start, then moves it into the substrate
    host's namespace (O(netns), or the module's own) and attaches it to its
    bridge; QEMU keeps using the tap across the move. It moves the taps back
    before the next start and deletes them with the domain.
  - O(state=absent) also deletes the domain's serial log and libvirt's own
    log of it (C(/var/log/libvirt/qemu/NAME-serial.log), C(NAME.log)), which
    libvirt leaves behind.
author: vnet developers (@vnet)
options:
  name:
    description: Name of the domain. Required unless O(domains) is given.
    type: str
  domains:
    description:
      - Several domains in one run, each a dict of this module's per-domain
        options (O(name), O(state), O(hypervisor), O(vcpus), O(memory_mb),
        O(kernel), O(initrd), O(cmdline), O(serial), O(vnc), O(interfaces),
        O(netns), O(ready_marker), O(pool), O(boot_timeout)), and C(vnode), the virtual node
        it realizes (its ready marker is then C(vnet-guest-ready VNODE)
        unless O(ready_marker) is given), so that a host's C(domains) of
        vnet's deployment plan can be passed as they are. Options an item leaves out come from the
        module's own; O(state=absent) removes every listed domain whatever
        its item says. They are converged in parallel (one thread each), and
        the run fails naming every domain that failed.
    type: list
    elements: dict
  pool:
    description:
      - A pool VM of vnet (QEMU only), booted before it is needed. Its
        domain has ACPI, so that NICs can be hot-plugged.
      - A pool VM may boot with pre-wired NICs, whose taps are named
        C(vq) + 10 hex digits of the sha256 of O(name) + the NIC's index and
        wait in O(netns) on no bridge.
      - When such a domain runs with only its pre-wired NICs (or none) and
        differs from the request only in O(cmdline) and O(interfaces), the
        module takes it over instead of restarting it. It defines the
        requested domain (for its next boot), renames the pre-wired taps to
        the requested ones in order (deleting spare ones; their NICs stay in
        the guest, down, until its next boot), hot-plugs (live) only the NICs
        beyond them, types C(vnet-config) with the command line's C(vnet.*)
        arguments on the guest's serial console (hostname, addresses by MAC,
        MTU, forwarding, routes; a pre-wired NIC keeps its own MAC until the
        next boot, so its MAC stands in for the requested one), and, at the
        same time, moves the taps onto their bridges.
    type: bool
    default: false
  state:
    description:
      - V(present) defines the domain and leaves it as it is; V(running),
        V(paused) and V(shutdown) also bring it into that state; V(absent)
        stops it, undefines it and deletes its taps.
    type: str
    choices: [present, absent, running, shutdown, paused]
    default: present
  uri:
    description:
      - libvirt connection URI, for example V(qemu:///system), V(xen:///system),
        or libvirt's test driver through libvirtd, V(test+unix:///default).
    type: str
    default: qemu:///system
  hypervisor:
    description: V(qemu) for a QEMU/KVM guest, V(xen) for a Xen PV guest.
    type: str
    choices: [qemu, xen]
    default: qemu
  accel:
    description:
      - QEMU only. V(kvm) asks for a domain of type kvm, V(tcg) for type qemu
        (emulation).
      - V(auto) picks kvm only where KVM really works, when the URI reaches
        QEMU, C(/dev/kvm) is readable and writable by the user QEMU runs as,
        and QEMU with KVM gets O(kernel) to print its banner on the serial line
        within 5 seconds (a nested KVM can take a VM and never run it). The
        verdict is kept under C(/run/vnet) per kernel and QEMU binary.
        Without O(kernel), V(auto) is V(tcg).
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  vcpus:
    description: Number of virtual CPUs.
    type: int
    default: 1
  memory_mb:
    description: Memory of the guest in MiB.
    type: int
    default: 256
  kernel:
    description:
      - Path of the guest kernel on the host (direct kernel boot). Without it a
        QEMU guest boots from the network (its first NIC's option ROM).
    type: path
  initrd:
    description: Path of the initramfs on the host. Needs O(kernel).
    type: path
  cmdline:
    description:
      - Kernel command line. Needs O(kernel). vnet's guest image reads its
        hostname and interface addresses (matched by MAC) from it.
    type: str
  serial:
    description: V(pty) gives the guest a serial console on a pseudo terminal (C(virsh console)).
    type: str
    choices: [pty, none]
    default: pty
  vnc:
    description: Whether the guest has a VNC display (on 127.0.0.1, port chosen by libvirt).
    type: bool
    default: false
  interfaces:
    description:
      - The guest's network interfaces, in order.
      - With O(state=absent), the taps to delete; when omitted, those of the
        domain's definition.
    type: list
    elements: dict
    suboptions:
      tap:
        description: Name of the tap device on the host (at most 15 characters).
        type: str
        required: true
      mac:
        description: MAC address of the guest's interface.
        type: str
        required: true
      bridge:
        description: Bridge the tap is attached to, in O(netns) or else in the module's own namespace.
        type: str
  netns:
    description:
      - Network namespace (under C(/run/netns)) the taps are moved into, the
        substrate host that carries the virtual node. It must exist, and so
        must each O(interfaces[].bridge) in it.
      - Without it the taps go into the namespace the module runs in (a
        substrate host reached over SSH, or a real KVM host), moved there
        from libvirtd's when that is another one (O(libvirt_pid)). With
        neither O(netns), bridges nor such a libvirtd the module does not
        touch taps; they must exist before the domain starts.
    type: str
  libvirt_pid:
    description:
      - The pid of a process in the network namespace where libvirtd opens
        taps, when that is not the module's own (the vnet lab's hosts reached
        over SSH are namespaces of one machine whose libvirtd runs in its
        root namespace). The taps are made there with C(nsenter) and moved
        into the module's namespace after the start.
      - By default the module finds it, as the daemon on the other end of
        libvirt's unix socket (C(SO_PEERCRED)) for a C(qemu) or C(xen) O(uri),
        taken only when its network namespace is not the module's.
    type: int
  shutdown_timeout:
    description: Seconds to wait for the guest to power off after an ACPI shutdown before forcing it off.
    type: int
    default: 10
  ready_marker:
    description:
      - With O(state=running), a line the guest prints on its serial console once
        it is configured (vnet's guest image prints C(vnet-guest-ready NAME)).
        The module waits for it in the serial log and fails, naming the domain,
        if the guest prints C(vnet-guest-failed) or nothing within O(boot_timeout).
    type: str
  boot_timeout:
    description: Seconds the guest has to print O(ready_marker).
    type: int
    default: 60
extends_documentation_fragment:
  - vnet.infra.common
  - vnet.infra.plan
attributes:
  check_mode:
    description: Reports the steps it would take and takes none.
  diff_mode:
    description: Returns the domain's definition, state and taps before and after.
requirements:
  - libvirt Python bindings (C(libvirt-python)) for the Python that runs the module.
  - iproute2 (C(ip)) and root privileges when the module owns the taps;
    C(nsenter) (util-linux) when libvirtd runs in another network namespace.
notes:
  - With O(netns) the module runs in libvirtd's network namespace (in the vnet
    lab with its C(netns) connection, the root namespace, so delegate the task
    to localhost) and O(netns) names the substrate host's namespace. On a
    host reached over SSH it runs on the host, whose namespace gets the
    taps.
  - Xen domains are generated and validated against libvirt's schema, but vnet
    has not run them on a Xen host.
seealso:
  - module: vnet.infra.vnet_node
  - module: vnet.infra.vnet_link
"""

EXAMPLES = r"""
- name: A running QEMU virtual node on substrate host vl-lab-h1, one NIC on bridge vbab
  vnet.infra.vnet_domain:
    name: vn-lab-v1-r1
    state: running
    memory_mb: 256
    kernel: /var/lib/vnet/images/abc/vmlinuz
    initrd: /var/lib/vnet/images/abc/initrd.gz
    cmdline: "console=ttyS0 vnet.hostname=r1 vnet.if=52:54:00:12:34:56,198.18.10.1/24"
    interfaces:
      - {tap: vtr1e0, mac: "52:54:00:12:34:56", bridge: vbab}
    netns: vl-lab-h1
  delegate_to: localhost

- name: Remove it, with its taps
  vnet.infra.vnet_domain:
    name: vn-lab-v1-r1
    state: absent
    netns: vl-lab-h1
  delegate_to: localhost

- name: The same node on a KVM host this task reaches over SSH (taps on its own bridges)
  vnet.infra.vnet_domain:
    name: vn-lab-v1-r1
    state: running
    kernel: /var/lib/vnet/images/abc/vmlinuz
    initrd: /var/lib/vnet/images/abc/initrd.gz
    cmdline: "console=ttyS0 vnet.hostname=r1 vnet.if=52:54:00:12:34:56,198.18.10.1/24"
    interfaces:
      - {tap: vtr1e0, mac: "52:54:00:12:34:56", bridge: vbab}
"""

RETURN = r"""
commands:
  description:
    - The steps taken (or, in check mode, that would be taken), as argv lists.
      C(["libvirt", VERB, NAME]) is a call on the libvirt connection (define,
      start, destroy, shutdown, suspend, resume, undefine, and C(attach) with
      a tap name, a live hot-plug); C(["guest", "configure", NAME, MAC=POOLMAC...])
      types C(vnet-config) on the guest's serial console (each MAC replaced by
      the pre-wired NIC's that stands in for it); the others are programs
      (consecutive C(ip) commands of one namespace run as one C(ip -batch)).
      With O(domains), a dict of such lists by domain name.
  returned: always
  type: list
  elements: list
  sample: [["libvirt", "define", "vn1"], ["ip", "tuntap", "add", "dev", "vt1", "mode", "tap"],
           ["libvirt", "start", "vn1"], ["ip", "link", "set", "dev", "vt1", "netns", "vl-lab-h1"]]
xml:
  description: The domain XML the module defines (absent with O(state=absent)).
  returned: when state is not absent
  type: str
domains:
  description: With O(domains), each domain's own result (commands, xml, accel) by name.
  returned: when domains is given
  type: dict
timings:
  description: Seconds spent per kind of step (define, start, attach, configure, ip, ready...).
  returned: always (with domains, in each domain's result)
  type: dict
accel:
  description: The accelerator of a QEMU domain, V(kvm) or V(tcg).
  returned: when state is not absent and hypervisor is qemu
  type: str
  sample: tcg
"""

import grp
import hashlib
import os
import pwd
import re
import socket
import stat
import struct
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import replace

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.vnet.infra.plugins.module_utils._domain import (
    GUEST,
    LIBVIRT,
    Command,
    DomainError,
    Have,
    PlanError,
    Want,
    before_after,
    domain_logs,
    domain_state,
    domain_xml,
    ip_argv,
    ip_groups,
    ip_head,
    nic_xml,
    parse_bridges,
    parse_domain,
    parse_taps,
    plan,
    serial_log,
    want_from_params,
)
from ansible_collections.vnet.infra.plugins.module_utils._serial import SerialError, run_line

LIBVIRT_IMPORT_ERROR = None
try:
    import libvirt
except ImportError:
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    state=dict(
        type="str", choices=["present", "absent", "running", "shutdown", "paused"], default="present"
    ),
    uri=dict(type="str", default="qemu:///system"),
    hypervisor=dict(type="str", choices=["qemu", "xen"], default="qemu"),
    accel=dict(type="str", choices=["auto", "kvm", "tcg"], default="auto"),
    vcpus=dict(type="int", default=1),
    memory_mb=dict(type="int", default=256),
    kernel=dict(type="path"),
    initrd=dict(type="path"),
    cmdline=dict(type="str"),
    serial=dict(type="str", choices=["pty", "none"], default="pty"),
    vnc=dict(type="bool", default=False),
    interfaces=dict(
        type="list",
        elements="dict",
        options=dict(
            tap=dict(type="str", required=True),
            mac=dict(type="str", required=True),
            bridge=dict(type="str"),
        ),
    ),
    netns=dict(type="str"),
    libvirt_pid=dict(type="int"),
    shutdown_timeout=dict(type="int", default=10),
    ready_marker=dict(type="str"),
    boot_timeout=dict(type="int", default=60),
    pool=dict(type="bool", default=False),
    domains=dict(type="list", elements="dict"),
)
PER_DOMAIN = ("name", "state", "hypervisor", "vcpus", "memory_mb", "kernel", "initrd",
              "cmdline", "serial", "vnc", "interfaces", "netns", "ready_marker", "pool",
              "vnode", "boot_timeout")
FAILED_MARKER = "vnet-guest-failed"
QEMU_CONF = "/etc/libvirt/qemu.conf"
QEMU_USER = "libvirt-qemu"
NETNS_DIR = "/run/netns"
LIBVIRT_RUN = "/run/libvirt"
DAEMON_SOCKETS = {"qemu": ("virtqemud-sock", "libvirt-sock"),
                  "xen": ("virtxend-sock", "libvirt-sock")}
PROBE_DIR = "/run/vnet"
PROBE_SECONDS = 5
QEMU = "qemu-system-x86_64"


def qemu_user() -> str:
    """The user libvirt runs QEMU as: qemu.conf's C(user), else Debian's default."""
    try:
        with open(QEMU_CONF) as conf:
            for line in conf:
                key, sep, value = line.partition("=")
                if sep and key.strip() == "user":
                    return value.strip().strip('"')
    except OSError:
        pass
    return QEMU_USER


def libvirtd_elsewhere(uri: str) -> int | None:
    """The pid of the libvirt daemon behind ``uri`` when its network namespace
    is not this process's, else None (also when it cannot be told: a daemon
    that does not answer, or a driver without one)."""
    driver = uri.split(":", 1)[0]
    for name in DAEMON_SOCKETS.get(driver, ()):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(os.path.join(LIBVIRT_RUN, name))
                cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
            pid = struct.unpack("3i", cred)[0]
            theirs = os.stat("/proc/%d/ns/net" % pid)
            ours = os.stat("/proc/self/ns/net")
        except (OSError, struct.error):
            continue
        same = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
        return None if same else pid
    return None


def kvm_usable(user: str) -> bool:
    """Whether /dev/kvm exists and ``user`` may read and write it (by its mode bits).

    Without udev (containers, minimal hosts) /dev/kvm is often root's alone,
    and a domain of type kvm would fail to start.
    """
    try:
        st = os.stat("/dev/kvm")
        account = pwd.getpwuid(int(user[1:])) if user.startswith("+") else pwd.getpwnam(user)
    except (OSError, KeyError, ValueError):
        return False
    if not stat.S_ISCHR(st.st_mode):
        return False
    if account.pw_uid == 0:
        return True
    if st.st_uid == account.pw_uid:
        shift = 6
    elif st.st_gid == account.pw_gid or account.pw_name in grp.getgrgid(st.st_gid).gr_mem:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & 0o6 == 0o6


def kvm_boots(module: AnsibleModule, kernel: str) -> bool:
    """Whether QEMU with KVM gets ``kernel`` to print its banner on ttyS0 in time.

    Opening /dev/kvm and creating a VM can succeed on a host where a guest
    then never runs (nested KVM here); only running one tells. The verdict
    is cached per kernel and QEMU binary (by path, size and mtime).
    """
    qemu = module.get_bin_path(QEMU)
    if qemu is None or not os.path.exists(kernel):
        return False
    facts = []
    for path in (kernel, qemu):
        st = os.stat(path)
        facts.append("%s:%d:%d" % (path, st.st_size, st.st_mtime_ns))
    key = hashlib.sha256("\0".join(facts).encode()).hexdigest()[:16]
    verdict = os.path.join(PROBE_DIR, "kvm-%s" % key)
    if os.path.exists(verdict):
        with open(verdict) as f:
            return f.read().strip() == "1"
    with tempfile.TemporaryDirectory(prefix="vnet-kvm-probe-") as tmp:
        log = os.path.join(tmp, "serial")
        argv = ["timeout", str(PROBE_SECONDS), qemu, "-accel", "kvm", "-display", "none"]
        argv += ["-nodefaults", "-no-reboot", "-m", "128", "-serial", "file:" + log]
        argv += ["-kernel", kernel, "-append", "console=ttyS0 panic=-1"]
        module.run_command(argv)
        with open(log, "rb") if os.path.exists(log) else open(os.devnull, "rb") as f:
            ok = b"Linux version" in f.read()
    os.makedirs(PROBE_DIR, exist_ok=True)
    with open(verdict, "w") as f:
        f.write("1\n" if ok else "0\n")
    return ok


class Host:
    """libvirt and ``ip`` on the host: reads ``have`` and carries out commands."""

    def __init__(self, module: AnsibleModule, conn: libvirt.virConnect) -> None:
        self.module = module
        self.conn = conn
        self.executed: list[Command] = []
        self.timings: dict = {}

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def ip_json(self, where: str | int | None, *args: str) -> str:
        """``ip -json ARGS`` where ``where`` says (as C(Tap.netns))."""
        argv = ip_argv(where, "-json", *args)
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            raise PlanError("%s failed: %s" % (" ".join(argv), err.strip()))
        return out

    def have(self, want: Want) -> Have:
        dom = self.lookup(want.name)
        spec, kvm, uuid, state = None, False, None, "shutoff"
        if dom is not None:
            spec, kvm = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            uuid = dom.UUIDString()
            state = domain_state(dom.state()[0])
        taps: dict = {}
        bridges: frozenset[str] = frozenset()
        netns_exists = False
        if want.owns_taps:
            if want.libvirt_pid is not None:
                taps.update(parse_taps(self.ip_json(want.libvirt_pid, "-details", "link", "show",
                                                    "type", "tun"), want.libvirt_pid))
            if want.netns is None:
                text = self.ip_json(None, "-details", "link", "show")
                taps.update(parse_taps(text, None))
                bridges = parse_bridges(text)
            else:
                taps.update(parse_taps(self.ip_json(None, "-details", "link", "show", "type",
                                                    "tun"), None))
                netns_exists = os.path.exists(os.path.join(NETNS_DIR, want.netns))
                if netns_exists:
                    text = self.ip_json(want.netns, "-details", "link", "show")
                    taps.update(parse_taps(text, want.netns))
                    bridges = parse_bridges(text)
        return Have(
            exists=dom is not None,
            spec=spec,
            kvm=kvm,
            uuid=uuid,
            state=state,
            taps=taps,
            netns_exists=netns_exists,
            bridges=bridges,
            logs=tuple(p for p in domain_logs(want.name) if os.path.exists(p)),
        )

    def apply(self, commands: list[Command], xml: str | None, timeout: int,
              boot_timeout: int = 60) -> None:
        """Carry out ``commands`` in order, except that consecutive C(ip) commands
        of one namespace run as one C(ip -batch), and a guest's reconfiguration
        runs in a thread of its own from where it stands in the list, beside the
        commands after it (the tap moves), joined before this returns."""
        guest: list = []  # [thread, argv, error]
        try:
            for group in ip_groups(commands):
                started = time.monotonic()
                argv = group[0]
                if argv[0] == GUEST:
                    self._join(guest)
                    guest[:] = [None, argv, None]
                    guest[0] = threading.Thread(target=self._configure_in,
                                                args=(guest, xml, boot_timeout))
                    guest[0].start()
                    continue
                if len(group) > 1:
                    self._batch(group)
                else:
                    self._apply_one(argv, xml, timeout, boot_timeout)
                self._time(argv, started)
        finally:
            self._join(guest)

    def _time(self, argv: Command, started: float) -> None:
        step = argv[1] if argv[0] in (LIBVIRT, GUEST) else argv[0]
        self.timings[step] = round(self.timings.get(step, 0.0) + time.monotonic() - started, 4)

    def _configure_in(self, guest: list, xml: str | None, boot_timeout: int) -> None:
        started = time.monotonic()
        argv = guest[1]
        try:
            self.configure(argv[2], xml, boot_timeout,
                           dict(m.split("=", 1) for m in argv[3:]))
        except BaseException as exc:  # raised again by the joining thread
            guest[2] = exc
        self._time(guest[1], started)

    def _join(self, guest: list) -> None:
        if not guest:
            return
        thread, argv = guest[0], guest[1]
        thread.join()
        error = guest[2]
        guest.clear()
        if error is not None:
            raise error
        self.executed.append(argv)

    def _batch(self, group: list[Command]) -> None:
        """Several C(ip) commands of one namespace in one C(ip -batch) process;
        a failure names the command of the line C(ip) reports."""
        head = list(ip_head(group[0]) or ())
        lines = [" ".join(argv[len(head):]) for argv in group]
        rc, _out, err = self.module.run_command([*head, "-batch", "-"],
                                                data="\n".join(lines) + "\n")
        if rc != 0:
            failed = re.search(r"Command failed -:(\d+)", err)
            at = int(failed.group(1)) - 1 if failed else 0
            at = min(max(at, 0), len(group) - 1)
            self.executed.extend(group[:at])
            raise PlanError("%s failed: %s" % (" ".join(group[at]), err.strip()),
                            failed_command=group[at])
        self.executed.extend(group)

    def _apply_one(self, argv: Command, xml: str | None, timeout: int,
                   boot_timeout: int) -> None:
        if argv[0] == LIBVIRT and argv[1] == "attach":
            self.attach(argv[2], argv[3], xml)
        elif argv[0] == LIBVIRT:
            self.libvirt(argv[1], argv[2], xml, timeout)
        else:
            rc, _out, err = self.module.run_command(argv)
            if rc != 0:
                raise PlanError(
                    "%s failed: %s" % (" ".join(argv), err.strip()), failed_command=argv
                )
        self.executed.append(argv)

    def attach(self, name: str, tap: str, xml: str | None) -> None:
        """Hot-plug the NIC of ``tap`` (as the definition ``xml`` has it) live."""
        spec, _kvm = parse_domain(xml or "")
        nic = next(n for n in spec.interfaces if n.tap == tap)
        self.conn.lookupByName(name).attachDeviceFlags(nic_xml(nic),
                                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def configure(self, name: str, xml: str | None, timeout: int,
                  macs: dict | None = None) -> None:
        """Type vnet-config with the definition's vnet.* arguments on the guest's
        serial console, each interface's MAC replaced as ``macs`` says (the
        pool NIC that stands in for it); its own ready line goes to the serial
        log as at boot."""
        spec, _kvm = parse_domain(xml or "")
        args = []
        for arg in (spec.cmdline or "").split():
            if arg.startswith("vnet.if="):
                mac, sep, rest = arg[len("vnet.if="):].partition(",")
                arg = "vnet.if=" + (macs or {}).get(mac, mac) + sep + rest
            if arg.startswith("vnet."):
                args.append(arg)
        live = ET.fromstring(self.conn.lookupByName(name).XMLDesc(0))
        pty = None
        for device in live.findall("devices/serial") + live.findall("devices/console"):
            source = device.find("source")
            path = source.get("path") if source is not None else device.get("tty")
            if device.get("type") == "pty" and path:
                pty = path
                break
        if pty is None:
            raise PlanError("domain %s has no serial console to configure it on" % name)
        try:
            rc, out = run_line(name, pty, " ".join(["vnet-config", *args]), timeout)
        except SerialError as exc:
            raise PlanError("domain %s: reconfiguring the guest: %s" % (name, exc)) from None
        if rc != 0:
            raise PlanError("guest of domain %s failed to reconfigure itself: %s"
                            % (name, " | ".join(out.strip().splitlines()[-3:])))

    def libvirt(self, verb: str, name: str, xml: str | None, timeout: int) -> None:
        if verb == "define":
            self.conn.defineXML(xml)
            return
        dom = self.conn.lookupByName(name)
        if verb == "shutdown":
            dom.shutdown()
            deadline = time.monotonic() + timeout
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if dom.isActive():
                dom.destroy()
            return
        {
            "start": dom.create,
            "destroy": dom.destroy,
            "suspend": dom.suspend,
            "resume": dom.resume,
            "undefine": dom.undefine,
        }[verb]()


def run_module(module: AnsibleModule, host: Host, params: dict | None = None) -> dict:
    params = module.params if params is None else params
    accel = params["accel"]
    if accel == "auto":
        kernel = params["kernel"]
        kvm = bool(
            params["hypervisor"] == "qemu"
            and kernel
            and host.conn.getType() == "QEMU"
            and kvm_usable(qemu_user())
            and kvm_boots(module, kernel)
        )
    else:
        kvm = accel == "kvm"
    want = want_from_params(params, kvm=kvm)
    have = host.have(want)
    if module.check_mode:  # the links' bridges come from an earlier task, checked only
        have = replace(have, bridges=have.bridges | {b for b in want.bridges.values() if b})
    commands = plan(want, have, os.getpid())
    before, after = before_after(want, have)
    xml = None
    if want.spec is not None and want.state != "absent":
        xml = domain_xml(want.spec, kvm=want.kvm, uuid=have.uuid)
    result = dict(changed=bool(commands), commands=commands, diff=dict(before=before, after=after))
    if xml is not None:
        result["xml"] = xml
        if want.spec is not None and want.spec.hypervisor == "qemu":
            result["accel"] = "kvm" if want.kvm else "tcg"
    if commands and not module.check_mode:
        host.apply(commands, xml, params["shutdown_timeout"], params["boot_timeout"])
        left = plan(want, host.have(want), os.getpid())
        if left:
            raise PlanError(
                "domain %s did not converge; still to do: %s" % (want.name, left), left=left
            )
    if params["ready_marker"] and want.state == "running" and not module.check_mode:
        started = time.monotonic()
        wait_ready(want.name, params["ready_marker"], params["boot_timeout"])
        host.timings["ready"] = round(time.monotonic() - started, 4)
    result["timings"] = host.timings
    return result


def wait_ready(name: str, marker: str, timeout: int) -> None:
    """Wait for the guest's ready line in its serial log (kept by virtlogd)."""
    path = serial_log(name)
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        try:
            with open(path, errors="replace") as log:
                text = log.read()
        except OSError:
            text = ""
        if marker in text:
            return
        if FAILED_MARKER in text:
            line = text[text.index(FAILED_MARKER):].splitlines()[0]
            raise PlanError("guest of domain %s failed to configure itself: %s" % (name, line),
                            serial_log=path)
        if time.monotonic() >= deadline:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise PlanError("guest of domain %s did not come up within %d s (last console "
                            "lines: %s)" % (name, timeout, tail or "none"), serial_log=path)
        time.sleep(0.05)


def item_params(module: AnsibleModule, item: dict) -> dict:
    """One item of O(domains) with the module's options filled in."""
    unknown = sorted(set(item) - set(PER_DOMAIN))
    if unknown:
        raise PlanError("domains: unknown option(s) %s" % ", ".join(unknown))
    params = dict(module.params)
    params.update({k: v for k, v in item.items() if v is not None})
    params.pop("domains", None)
    vnode = params.pop("vnode", None)
    if module.params["state"] == "absent":
        params["state"] = "absent"
    if vnode and not item.get("ready_marker"):
        params["ready_marker"] = "vnet-guest-ready %s" % vnode
    if not params.get("name"):
        raise PlanError("domains: an item has no name")
    return params


def run_many(module: AnsibleModule) -> dict:
    """Every item of O(domains), each in its own thread with its own connection."""
    items = [item_params(module, item) for item in module.params["domains"]]
    names = [p["name"] for p in items]
    if len(set(names)) != len(names):
        raise PlanError("domains: names repeat: %s" % names)
    results: dict = {}
    errors: dict = {}
    executed: dict = {}

    def one(params: dict) -> None:
        name = params["name"]
        try:
            conn = libvirt.open(params["uri"])
        except libvirt.libvirtError as exc:
            errors[name] = "cannot connect to %s: %s" % (params["uri"], exc)
            return
        host = Host(module, conn)
        try:
            results[name] = run_module(module, host, params)
        except PlanError as exc:
            errors[name] = exc.msg
        except (DomainError, libvirt.libvirtError) as exc:
            errors[name] = "domain %s: %s" % (name, exc)
        except Exception as exc:  # a thread must report, never vanish
            errors[name] = "domain %s: %s: %s" % (name, type(exc).__name__, exc)
        finally:
            executed[name] = host.executed
            conn.close()

    threads = [threading.Thread(target=one, args=(p,)) for p in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise PlanError("; ".join(errors[n] for n in names if n in errors),
                        failed_domains=sorted(errors), commands=executed)
    return dict(
        changed=any(results[n]["changed"] for n in names),
        commands={n: results[n]["commands"] for n in names},
        diff=dict(before={n: results[n]["diff"]["before"] for n in names},
                  after={n: results[n]["diff"]["after"] for n in names}),
        domains={n: {k: v for k, v in results[n].items() if k != "diff"} for n in names},
    )


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_one_of=[("name", "domains")],
                           mutually_exclusive=[("name", "domains")])
    if LIBVIRT_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    if module.params["libvirt_pid"] is None:
        module.params["libvirt_pid"] = libvirtd_elsewhere(module.params["uri"])
    if module.params["domains"] is not None:
        try:
            module.exit_json(**run_many(module))
        except PlanError as exc:
            module.fail_json(msg=exc.msg, **exc.details)
    try:
        conn = libvirt.open(module.params["uri"])
    except libvirt.libvirtError as exc:
        module.fail_json(msg="cannot connect to %s: %s" % (module.params["uri"], exc))
    host = Host(module, conn)
    try:
        result = run_module(module, host)
    except PlanError as exc:
        module.fail_json(msg=exc.msg, commands=host.executed, **exc.details)
    except DomainError as exc:
        module.fail_json(msg=str(exc), commands=host.executed)
    except libvirt.libvirtError as exc:
        module.fail_json(
            msg="domain %s: libvirt: %s" % (module.params["name"], exc), commands=host.executed
        )
    finally:
        conn.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
