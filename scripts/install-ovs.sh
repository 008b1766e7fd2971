#!/usr/bin/env bash
# Install Open vSwitch (Debian's openvswitch-switch) for the lab's VLAN switch,
# without starting Debian's own service: vnet starts ovsdb-server and
# ovs-vswitchd per lab, with private run/db directories
# (vnetlib/switch/daemons.py), and the bridges use the userspace datapath
# (datapath_type=netdev), since the kernel module is missing on such machines.
# Also ethtool (nodes on a userspace bridge need TX checksum offload off, or
# their TCP segments arrive with bad checksums) and openssh-server (its
# service not started either): the remote switch
# driver's test runs a private sshd in a switch namespace.
# Safe to run again: installs only what is missing. Prints ovs-vswitchd's path.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for p in openvswitch-switch openssh-server ethtool; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    # policy-rc.d exit 101: the packages' postinst must not start their services.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    trap 'if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
for tool in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl sshd; do
    command -v "$tool" >/dev/null || { echo "$tool missing after install" >&2; exit 1; }
done
[ -f /usr/share/openvswitch/vswitch.ovsschema ] || { echo "vswitch.ovsschema missing" >&2; exit 1; }
command -v ovs-vswitchd
