#!/usr/bin/env bash
# ansible-test sanity for the vnet.infra collection (the repository root).
#
# Copies the collection's files (git ls-files of the collection paths, plus
# untracked ones that are not ignored) into a temporary
# ansible_collections/vnet/infra/ and runs ansible-test sanity there with
# empty ignore files. ansible-test's --venv mode needs a pip bootstrap script
# from ci-files.testing.ansible.com, so instead the script keeps its own
# virtual environment ($VNET_SANITY_VENV, default ~/.cache/vnet/sanity-venv)
# with the project's ansible-core version, and `--requirements` installs the
# sanity requirements from PyPI into it, never into the project's .venv.
#
# Then runs ansible-lint (production profile, .ansible-lint) on the same copy,
# from a third virtual environment ($VNET_LINT_VENV, default
# ~/.cache/vnet/lint-venv); VNET_SKIP_LINT=1 skips it.
#
#   scripts/sanity.sh                     # all sanity tests that apply, then ansible-lint
#   scripts/sanity.sh --test validate-modules
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_version="${VNET_SANITY_PYTHON:-3.11}"
sanity_venv="${VNET_SANITY_VENV:-$HOME/.cache/vnet/sanity-venv}"
core_version="$("$root/.venv/bin/python" -c 'import ansible.release as r; print(r.__version__)')"

if [ ! -x "$sanity_venv/bin/ansible-test" ] \
   || [ "$("$sanity_venv/bin/python" -c 'import ansible.release as r; print(r.__version__)')" != "$core_version" ]; then
  "python$python_version" -m venv "$sanity_venv"
  "$sanity_venv/bin/python" -m pip install --quiet --upgrade pip
  "$sanity_venv/bin/python" -m pip install --quiet "ansible-core==$core_version"
fi
export PATH="$sanity_venv/bin:$PATH"

# ansible-test bootstraps pip in each sanity test's virtual environment with a
# get-pip script from ci-files.testing.ansible.com, which this network cannot
# reach. It looks for the script in its cache first, so put a stand-in there
# that uses ensurepip and then pip (from the configured package index).
pip_version="$(grep -o "pip='[0-9.]*'" "$("$sanity_venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py" | head -1 | tr -dc '0-9.')"
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ -n "$pip_version" ] && { [ ! -e "$get_pip" ] || grep -q "vnet's scripts/sanity.sh" "$get_pip"; }; then
  mkdir -p "$(dirname "$get_pip")"
  cat > "$get_pip" <<'PY'
"""Stand-in for get-pip.py, written by vnet's scripts/sanity.sh: ensurepip, then pip install."""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet"] + args))
PY
fi

paths=(galaxy.yml meta plugins roles playbooks docs/collection.md inventories/hen .ansible-lint)
work="$(mktemp -d /tmp/vnet-sanity.XXXXXX)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/vnet/infra"
mkdir -p "$dest"

cd "$root"
git ls-files -z --cached --others --exclude-standard -- "${paths[@]}" \
  | while IFS= read -r -d '' f; do
      [ -e "$f" ] || continue
      mkdir -p "$dest/$(dirname "$f")"
      cp -p "$f" "$dest/$f"
    done

# Empty ignore files for the ansible-core versions the collection supports.
mkdir -p "$dest/tests/sanity"
for v in 2.16 2.17 2.18 2.19 2.20; do : > "$dest/tests/sanity/ignore-$v.txt"; done

cd "$dest"
ansible-test sanity --requirements --python "$python_version" --color no "$@"

if [ "${VNET_SKIP_LINT:-0}" != 1 ]; then
  lint_venv="${VNET_LINT_VENV:-$HOME/.cache/vnet/lint-venv}"
  if [ ! -x "$lint_venv/bin/ansible-lint" ]; then
    "python$python_version" -m venv "$lint_venv"
    "$lint_venv/bin/python" -m pip install --quiet "ansible-core==$core_version" ansible-lint
  fi
  rm -rf "$dest/tests/output"
  ANSIBLE_COLLECTIONS_PATH="$work" PATH="$lint_venv/bin:$PATH" \
    ansible-lint --nocolor --offline --profile production
fi
