#!/usr/bin/env bash
# Install what end-user attachment (Interface 6) needs on a Debian machine, as
# root: FreeRADIUS (the VNO's server and the PIP's realm proxy) with radclient,
# hostapd (the wired 802.1X authenticator on access ports), wpa_supplicant (the
# end-user device's client, also eapol_test) and dnsmasq-base (attachment
# pools; the -base package has no system service) and busybox (udhcpc, the
# device's DHCP client). The lab runs its own
# instances with generated configuration, so the packages' services must not
# start: a policy-rc.d keeps invoke-rc.d from starting them during the
# install, and a running system freeradius is stopped. Safe to run again: it
# only installs what is missing.
set -euo pipefail

packages=(freeradius freeradius-utils hostapd wpasupplicant dnsmasq-base busybox)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    placed=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        placed=1
    fi
    trap '[ "$placed" = 1 ] && rm -f "$policy"' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if pidfile=/run/freeradius/freeradius.pid && [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
fi
command -v freeradius hostapd wpa_supplicant dnsmasq radclient >/dev/null
