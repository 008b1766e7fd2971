#!/usr/bin/env bash
# Install what the VNO's web console and its test need on a Debian machine,
# as root: noVNC's pages (Debian's novnc puts them in /usr/share/novnc),
# websockify (novnc's dependency; the VNO bridges websockets itself), and a
# headless Chromium for tests/e2e/test_webconsole.py. Safe to run again: it
# only installs what is missing.
set -euo pipefail

packages=(novnc websockify chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
