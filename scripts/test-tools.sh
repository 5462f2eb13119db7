#!/usr/bin/env bash
# Installs what the tests need beyond the workspace, outside the clone:
# - moto's server, a local AWS emulator (the Cognito user pool and DynamoDB directory
#   tests use it), in a virtualenv;
# - the `cedar` CLI of the Cedar version the sidecar is built with, from the Rust
#   registry: exported decision tables must pass its `run-tests` as they pass ours.
# Idempotent: a second run with the same versions does nothing. scripts/check.sh runs
# this first.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
MOTO_EXTRAS="server,cognitoidp,dynamodb"
venv="${AUTHZ_TEST_VENV:-$HOME/.cache/authz-sidecar/venv}"
# the cedar-policy version in Cargo.lock: the CLI speaks the same language
CEDAR_VERSION="$(awk '/^name = "cedar-policy"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)"
tools="${AUTHZ_TEST_TOOLS:-$HOME/.cache/authz-sidecar/tools}"

moto_installed() {
  [ -x "$venv/bin/moto_server" ] &&
    "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$MOTO_VERSION')" 2>/dev/null &&
    [ "$(cat "$venv/.moto-extras" 2>/dev/null)" = "$MOTO_EXTRAS" ]
}

cedar_installed() {
  [ -x "$tools/bin/cedar" ] && "$tools/bin/cedar" --version 2>/dev/null | grep -qx "cedar-policy-cli $CEDAR_VERSION"
}

if ! moto_installed; then
  echo "installing moto[$MOTO_EXTRAS]==$MOTO_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[$MOTO_EXTRAS]==$MOTO_VERSION"
  echo "$MOTO_EXTRAS" > "$venv/.moto-extras"
  moto_installed || { echo "error: moto_server is not usable in $venv" >&2; exit 1; }
fi

if ! cedar_installed; then
  [ -n "$CEDAR_VERSION" ] || { echo "error: no cedar-policy version in Cargo.lock" >&2; exit 1; }
  echo "installing the cedar CLI $CEDAR_VERSION into $tools"
  # a target directory of its own (a release build), removed afterwards: the
  # workspace's build cache keeps only the workspace's profiles
  build="$(mktemp -d)"
  CARGO_TARGET_DIR="$build" cargo install cedar-policy-cli --version "$CEDAR_VERSION" --locked --root "$tools" --quiet
  rm -rf "$build"
  cedar_installed || { echo "error: the cedar CLI $CEDAR_VERSION is not usable in $tools/bin" >&2; exit 1; }
fi
