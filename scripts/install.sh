#!/usr/bin/env bash
# Install what vnet needs on a Debian machine, as root: system packages, a
# virtual environment in .venv with vnetlib, and the vnet.infra collection
# next to it. Safe to run again: it only installs what is missing.
#   scripts/install.sh          # what `vnet` needs
#   scripts/install.sh --test   # plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

packages=(iproute2 iputils-ping procps)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf .venv
        "$python" -m venv .venv
    fi
fi
# pip runs only when pyproject.toml changed since the last install.
stamp=".venv/.vnet-installed-$with_tests"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    extras=""
    [ "$with_tests" = 1 ] && extras="[test]"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e ".$extras" >.venv/pip.log 2>&1 \
        || { cat .venv/pip.log; exit 1; }
    echo "$want" > "$stamp"
fi
.venv/bin/python -c "import vnetlib, ansible_runner, lxml, pyroute2" # fail loudly if pip did

# The collection goes where vnetlib looks for it: <venv>/share/ansible/collections.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
.venv/bin/ansible-galaxy collection build --force --output-path "$build" . >/dev/null
ANSIBLE_COLLECTIONS_PATH=.venv/share/ansible/collections \
    .venv/bin/ansible-galaxy collection install --force -p .venv/share/ansible/collections \
    "$build"/vnet-infra-*.tar.gz >/dev/null
echo "vnet installed: $(.venv/bin/vnet --version); collection vnet.infra in .venv/share/ansible/collections"
