#!/usr/bin/env bash
# Install the Debian packages that VM virtual nodes (kind qemu) and their tests
# need, as root. Safe to run again: it only installs what is missing.
# The guest image itself (vnetlib/vm/image.py) needs no package installed here:
# it fetches the kernel and busybox with `apt-get download` and unpacks them
# with dpkg-deb; it writes the initramfs in Python. apt's package lists must
# be there for that, so this script runs `apt-get update` when they are not.
set -euo pipefail

packages=(qemu-system-x86 iproute2 iputils-ping)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=0
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
if [ "$updated" = 0 ] && ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt-get update -qq
fi
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing"; exit 1; }
echo "vm packages installed: $(qemu-system-x86_64 --version | head -1)"
