#!/usr/bin/env bash
# Install what the tests need and run them all, as root: lint and types,
# unit tests, Ansible module tests, end-to-end tests on real namespaces, and
# ansible-test sanity on the collection. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff =="
ruff check vnetlib tests bench
echo "== mypy =="
mypy
echo "== ansible-test sanity =="
scripts/sanity.sh
echo "== pytest =="
pytest -p no:cacheprovider -ra --durations=40 "$@"
