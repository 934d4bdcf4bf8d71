#!/usr/bin/env bash
# Builds (or reuses) the Python virtualenv for the API tests from PyPI, with the exact pins of
# tests/api/requirements*.txt. Prints the venv's directory on stdout.
#   UNICELL_API_VENV  where to build it (default: target/api-venv)
#   PYTHON            the interpreter to build it with (default: python3)
# Rebuilt only when the requirement files change (a hash stamp is kept in the venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${UNICELL_API_VENV:-$root/target/api-venv}"
py="${PYTHON:-python3}"
stamp_want="$(cat "$here/requirements.txt" "$here/requirements-nodeps.txt" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" = "$stamp_want" ]; then
  echo "$venv"
  exit 0
fi
if ! "$py" -m venv --help >/dev/null 2>&1; then
  echo "tests/api/venv.sh: $py has no venv module (apt-get install python3-venv)" >&2
  exit 1
fi
rm -rf "$venv"
"$py" -m venv "$venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$here/requirements-nodeps.txt" >&2
"$venv/bin/python" -c "import openstack, novaclient, openstackclient, tempest.lib, pytest" >&2
echo "$stamp_want" > "$venv/.requirements-sha256"
echo "$venv"
