"""libvirt domain XML of VM virtual nodes: golden files, libvirt's schema, parsing back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from vnetlib.vm.domain import DomainError, DomainSpec, Nic, domain_xml, parse_domain

DATA = Path(__file__).parent / "data" / "domain"
KERNEL = "/var/lib/vnet/images/k1/vmlinuz"
INITRD = "/var/lib/vnet/images/k1/initrd.gz"

QEMU = DomainSpec(
    "vn-lab-v1-r1",
    vcpus=2,
    memory_mb=256,
    kernel=KERNEL,
    initrd=INITRD,
    cmdline="console=ttyS0 vnet.hostname=r1 vnet.if=52:54:00:12:34:56,198.18.10.1/24",
    interfaces=(Nic("vtr1e0", "52:54:00:12:34:56"), Nic("vtr1e1", "52:54:00:12:34:57")),
    vnc=True,
)
XEN = DomainSpec(
    "vn-lab-v1-x1",
    hypervisor="xen",
    memory_mb=128,
    kernel=KERNEL,
    initrd=INITRD,
    cmdline="console=hvc0 vnet.hostname=x1",
    interfaces=(Nic("vtx1e0", "00:16:3e:00:00:01"),),
)
NETBOOT = DomainSpec("vn-lab-v1-n1", memory_mb=64, interfaces=(Nic("vtn1e0", "52:54:00:00:00:01"),))
BARE = DomainSpec("vn-lab-v1-b1", serial=None)

# What libvirt's test driver returns for a definition like NETBOOT: units in
# KiB, defaults added (uuid, clock, video, a second listen form).
LIBVIRT_DUMP = """<domain type='qemu'>
  <name>vn-lab-v1-n1</name>
  <uuid>066260c0-0c67-49fa-b8be-de5592890c43</uuid>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='network'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:01'/>
      <target dev='vtn1e0' managed='no'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <video>
      <model type='cirrus' vram='16384' heads='1' primary='yes'/>
    </video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.mark.parametrize(
    ("spec", "kvm", "golden"),
    [(QEMU, True, "qemu-kvm.xml"), (XEN, False, "xen-pv.xml")],
    ids=["qemu", "xen"],
)
def test_golden(spec: DomainSpec, kvm: bool, golden: str) -> None:
    assert domain_xml(spec, kvm=kvm) == (DATA / golden).read_text()


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
@pytest.mark.parametrize(
    ("spec", "kvm"),
    [(QEMU, True), (QEMU, False), (XEN, False), (NETBOOT, False), (BARE, False)],
    ids=["qemu-kvm", "qemu-tcg", "xen", "netboot", "bare"],
)
def test_libvirt_schema_accepts(spec: DomainSpec, kvm: bool, tmp_path: Path) -> None:
    path = tmp_path / f"{spec.name}.xml"
    path.write_text(domain_xml(spec, kvm=kvm, uuid="066260c0-0c67-49fa-b8be-de5592890c43"))
    proc = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
def test_libvirt_schema_rejects_what_vnet_must_not_emit(tmp_path: Path) -> None:
    """The schema check is not vacuous: a domain without a name fails it."""
    path = tmp_path / "bad.xml"
    path.write_text(domain_xml(QEMU).replace("<name>vn-lab-v1-r1</name>", ""))
    proc = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("spec", [QEMU, XEN, NETBOOT, BARE], ids=lambda s: s.name)
@pytest.mark.parametrize("kvm", [False, True])
def test_parse_back(spec: DomainSpec, kvm: bool) -> None:
    assert parse_domain(domain_xml(spec, kvm=kvm)) == (spec, kvm and spec.hypervisor == "qemu")


def test_parse_what_libvirt_reports() -> None:
    assert parse_domain(LIBVIRT_DUMP) == (NETBOOT, False)


def test_uuid_is_kept_for_redefinition() -> None:
    xml = domain_xml(BARE, uuid="066260c0-0c67-49fa-b8be-de5592890c43")
    assert "<uuid>066260c0-0c67-49fa-b8be-de5592890c43</uuid>" in xml
    assert xml.index("<uuid>") < xml.index("<memory")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Nic("a-tap-name-too-long", "52:54:00:00:00:01"), "not a valid interface name"),
        (lambda: Nic("vt0", "52:54:00:00:00"), "six lower-case hex pairs"),
        (lambda: DomainSpec("r1", cmdline="quiet"), "initrd and cmdline need a kernel"),
        (lambda: DomainSpec("x1", hypervisor="xen"), "Xen PV guest needs a kernel"),
        (lambda: DomainSpec("r1", memory_mb=8), "at least 1 vCPU and 16 MiB"),
        (lambda: DomainSpec("r 1"), "domain name 'r 1' is not valid"),
        (
            lambda: DomainSpec(
                "r1", interfaces=(Nic("vt0", "52:54:00:00:00:01"), Nic("vt0", "52:54:00:00:00:02"))
            ),
            "tap names repeat",
        ),
    ],
)
def test_invalid_specs_name_the_value(make: Callable[[], object], message: str) -> None:
    with pytest.raises(DomainError, match=message):
        make()


def test_foreign_domain_type_rejected() -> None:
    with pytest.raises(DomainError, match="type 'lxc'"):
        parse_domain(LIBVIRT_DUMP.replace("type='qemu'", "type='lxc'", 1))
