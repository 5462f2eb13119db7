#!/usr/bin/env bash
# Installs what the tests need beyond Rust: moto's server, a local AWS emulator (the
# Cognito user pool and DynamoDB directory tests use it), in a virtualenv outside the
# clone. Idempotent: a second run with the same version and extras does nothing.
# scripts/check.sh runs this first.
set -euo pipefail

MOTO_VERSION="5.2.5"
MOTO_EXTRAS="server,cognitoidp,dynamodb"
venv="${AUTHZ_TEST_VENV:-$HOME/.cache/authz-sidecar/venv}"

installed() {
  [ -x "$venv/bin/moto_server" ] &&
    "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$MOTO_VERSION')" 2>/dev/null &&
    [ "$(cat "$venv/.moto-extras" 2>/dev/null)" = "$MOTO_EXTRAS" ]
}

if installed; then
  exit 0
fi
echo "installing moto[$MOTO_EXTRAS]==$MOTO_VERSION into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[$MOTO_EXTRAS]==$MOTO_VERSION"
echo "$MOTO_EXTRAS" > "$venv/.moto-extras"
installed || { echo "error: moto_server is not usable in $venv" >&2; exit 1; }
