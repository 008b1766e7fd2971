#!/usr/bin/env bash
# Install Open vSwitch (Debian's openvswitch-switch) for the lab's VLAN switch,
# without starting Debian's own service: vnet starts ovsdb-server and
# ovs-vswitchd per lab, with private run/db directories
# (vnetlib/switch/daemons.py), and the bridges use the userspace datapath
# (datapath_type=netdev), since the kernel module is missing on such machines.
# Safe to run again: installs only what is missing. Prints ovs-vswitchd's path.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}' openvswitch-switch 2>/dev/null | grep -q "install ok installed"; then
    echo "installing Debian package openvswitch-switch" >&2
    # policy-rc.d exit 101: the package's postinst must not start the service.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    trap '[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        openvswitch-switch >/dev/null
fi
for tool in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl; do
    command -v "$tool" >/dev/null || { echo "$tool missing after install" >&2; exit 1; }
done
[ -f /usr/share/openvswitch/vswitch.ovsschema ] || { echo "vswitch.ovsschema missing" >&2; exit 1; }
command -v ovs-vswitchd
