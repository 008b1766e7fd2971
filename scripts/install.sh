#!/usr/bin/env bash
# Install what vnet needs on a Debian machine, as root: system packages, a
# virtual environment in .venv with vnetlib installed editable, and this
# checkout's vnet.infra collection visible to that environment's Ansible.
# Safe to run again: it only installs what is missing.
#   scripts/install.sh          # what `vnet` needs
#   scripts/install.sh --test   # plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

packages=(iproute2 iputils-ping procps openssh-client graphviz)  # graphviz: vnet show
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
# pip runs only when pyproject.toml or setup.py changed since the last install.
stamp=".venv/.vnet-installed-$with_tests"
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    extras=""
    [ "$with_tests" = 1 ] && extras="[test]"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e ".$extras" >.venv/pip.log 2>&1 \
        || { cat .venv/pip.log; exit 1; }
    echo "$want" > "$stamp"
fi
.venv/bin/python -c "import vnetlib, ansible_runner, lxml, pyroute2" # fail loudly if pip did

# vnetlib is installed editable, so the collection is this checkout's root,
# which `vnet` finds by itself (vnetlib/deploy/ansible.py). For a plain
# `ansible-playbook vnet.infra.deploy_vnet` with
# ANSIBLE_COLLECTIONS_PATH=.venv/share/ansible/collections, link the
# collection's parts (not the root: no directory loop) there, where earlier
# versions of this script put a built copy. (Not on the Python path: the
# collection tests import vnet.infra through a tree of their own.)
share=.venv/share/ansible/collections
infra="$share/ansible_collections/vnet/infra"
rm -rf "$infra"
mkdir -p "$infra"
for part in galaxy.yml meta plugins roles playbooks; do
    ln -s "$PWD/$part" "$infra/$part"
done
where=$(.venv/bin/python -c 'from vnetlib.deploy.ansible import check_installed as c; print(c().collection)')
ANSIBLE_COLLECTIONS_PATH="$PWD/$share" .venv/bin/ansible-doc vnet.infra.vnet_node >/dev/null \
    || { echo "ansible-doc does not find vnet.infra in $share"; exit 1; }
# What VM nodes and their tests need (QEMU; the guest image is built and
# cached on first use, outside the work tree).
if [ "$with_tests" = 1 ]; then
    scripts/install-vm.sh
    scripts/install-libvirt.sh
    # The system Python of the SSH lab's hosts runs vnet_domain and
    # vnet_vlan, as a real KVM host's would: Debian's libvirt binding, and
    # ovsdbapp and paramiko for the switch's two drivers.
    host_python="python3-libvirt python3-ovsdbapp python3-paramiko"
    # shellcheck disable=SC2086
    dpkg -s $host_python >/dev/null 2>&1 || { apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $host_python >/dev/null; }
    scripts/install-webconsole.sh
    scripts/install-aaa.sh
    scripts/install-click.sh >/dev/null  # Click, built once into /var/cache/vnet/click
    scripts/install-ovs.sh >/dev/null  # Open vSwitch for switch VLANs (service not started)
fi
echo "vnet installed: $(.venv/bin/vnet --version); collection vnet.infra: $where"
