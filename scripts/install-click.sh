#!/usr/bin/env bash
# Build the Click modular router (user-level driver only) from the vendored
# source tarball (third_party/click), once per machine, into a cache outside the work tree keyed
# by the tarball's sha256:
#   /var/cache/vnet/click/<sha256[:16]>/bin/click
# The tree is installed under a temporary name and renamed when complete, so
# a half-built cache is never used; a second run finds it and does nothing.
# The compiler runs under `nice -n 19` (shared machines). Element groups vnet
# does not use (analysis, app, aqm, test) and the host tools are left out to
# cut build time. Prints the click binary's path on its last line.
#   scripts/install-click.sh                 # uses third_party/click (vendored)
#   CLICK_TARBALL=... CLICK_CACHE=... CLICK_JOBS=2 scripts/install-click.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tarball=${CLICK_TARBALL:-third_party/click/click-9197a594b1c3.tar.gz}
expected=c9aa3dc9d41634698605b50359b27e2a85c47ad99dc411a0a7770022814ac14f
cache=${CLICK_CACHE:-/var/cache/vnet/click}
jobs=${CLICK_JOBS:-2}
[ -f "$tarball" ] || { echo "click source not found: $tarball" >&2; exit 1; }

sum=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ -z "${CLICK_TARBALL:-}" ] && [ "$sum" != "$expected" ]; then
    echo "click source $tarball: sha256 $sum, expected $expected" >&2
    exit 1
fi
key=${sum:0:16}
final="$cache/$key"

# iperf3: the data plane benchmark's throughput (python -m bench.dataplane)
if ! command -v iperf3 >/dev/null 2>&1; then
    echo "installing Debian packages: iperf3" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iperf3 >/dev/null
fi
if [ -x "$final/bin/click" ]; then
    echo "$final/bin/click"
    exit 0
fi

packages=(g++ make perl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar xzf "$tarball" -C "$work"
cd "$work/click"
echo "building click $key in $work (log: $work/build.log)" >&2
{
    CXXFLAGS="-O2" CFLAGS="-O2" nice -n 19 ./configure --prefix="$final" \
        --enable-userlevel --disable-linuxmodule --disable-dpdk \
        --disable-analysis --disable-app --disable-aqm --disable-test \
        --enable-tools=no
    nice -n 19 make -j"$jobs"
    nice -n 19 make install DESTDIR="$work/dest"
} >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
timeout 20 "$work/dest$final/bin/click" -e 'InfiniteSource(LIMIT 1, STOP true) -> Discard;' \
    || { echo "built click does not run" >&2; exit 1; }
# Atomic publish: another run may have finished first; keep its tree.
mv -T "$work/dest$final" "$final" 2>/dev/null || [ -x "$final/bin/click" ]
echo "$final/bin/click"
