#!/usr/bin/env bash
# Installs what the tests need beyond Rust: moto's server, a local AWS emulator (the
# Cognito user pool test uses it), in a virtualenv outside the clone. Idempotent: a
# second run with the same version does nothing. scripts/check.sh runs this first.
set -euo pipefail

MOTO_VERSION="5.2.5"
venv="${AUTHZ_TEST_VENV:-$HOME/.cache/authz-sidecar/venv}"

installed() {
  [ -x "$venv/bin/moto_server" ] &&
    "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$MOTO_VERSION')" 2>/dev/null
}

if installed; then
  exit 0
fi
echo "installing moto[server,cognitoidp]==$MOTO_VERSION into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server,cognitoidp]==$MOTO_VERSION"
installed || { echo "error: moto_server is not usable in $venv" >&2; exit 1; }
