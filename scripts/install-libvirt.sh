#!/usr/bin/env bash
# Install what vnet's VM nodes need on a Debian machine, as root: libvirt's
# daemons and clients (virsh, virt-xml-validate), QEMU, and the libvirt
# Python bindings in .venv (PyPI's libvirt-python builds against libvirt-dev
# with pkg-config; Debian's python3-libvirt serves only the system Python).
# virt-xml-validate needs xmllint (libxml2-utils).
# Safe to run again: it only installs what is missing. Run scripts/install.sh
# first (it makes .venv). Starts no daemon: vnetlib.vm.libvirtd does that.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libvirt-daemon-system libvirt-clients libvirt-dev pkg-config qemu-system-x86 libxml2-utils gcc python3-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Without systemd, the packages' postinst scripts cannot start services;
    # policy-rc.d keeps them from trying.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { [ "$made_policy" = 1 ] && rm -f "$policy"; exit 1; }
    [ "$made_policy" = 1 ] && rm -f "$policy"
fi

# Debian's udev rules give /dev/kvm to group kvm with mode 0660, and libvirt's
# QEMU user (libvirt-qemu) is in that group. Without udev (containers) it
# stays root's 0600: QEMU cannot use KVM, and libvirt 9.0 then probes QEMU's
# capabilities again (about 40 s here) on every define and start, as its
# cached probe disagrees with what the QEMU user may open.
if [ -c /dev/kvm ] && getent group kvm >/dev/null \
   && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

if [ ! -x .venv/bin/python ]; then
    echo "no .venv: run scripts/install.sh first" >&2
    exit 1
fi
if ! .venv/bin/python -c "import libvirt" 2>/dev/null; then
    echo "installing libvirt-python into .venv"
    .venv/bin/python -m pip install -q "libvirt-python==$(pkg-config --modversion libvirt)" >.venv/pip-libvirt.log 2>&1 \
        || .venv/bin/python -m pip install -q libvirt-python >>.venv/pip-libvirt.log 2>&1 \
        || { cat .venv/pip-libvirt.log; exit 1; }
fi
.venv/bin/python -c "import libvirt; print('libvirt-python', libvirt.getVersion())"
