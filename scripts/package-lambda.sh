#!/usr/bin/env bash
# Packages the DataZone account-pool handler for AWS Lambda's custom runtime
# (provided.al2023): the release binary as `bootstrap`, linked against the runtime's
# glibc 2.34 whatever this machine's is, with policies/, entities/ and its configuration
# (deploy/lambda/sidecar.toml, or the file AUTHZ_LAMBDA_CONFIG names, as sidecar.toml)
# beside it, in target/lambda/authz-account-pool-<arch>.zip (deploy/lambda/account-pool.yaml deploys
# it). The cross linker is zig, from the Python package registry (cargo-zigbuild and
# ziglang, in a virtualenv outside the clone), so nothing is downloaded from elsewhere.
#
# Usage: scripts/package-lambda.sh [x86_64|arm64]
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-x86_64}"
case "$arch" in
  x86_64) target=x86_64-unknown-linux-gnu ;;
  arm64) target=aarch64-unknown-linux-gnu ;;
  *) echo "usage: $0 [x86_64|arm64]" >&2; exit 2 ;;
esac

config="${AUTHZ_LAMBDA_CONFIG:-deploy/lambda/sidecar.toml}"
[ -f "$config" ] || { echo "error: no configuration to package at $config" >&2; exit 1; }

PACKAGES="cargo-zigbuild==0.24.1 ziglang==0.17.1"
venv="${AUTHZ_LAMBDA_VENV:-$HOME/.cache/authz-sidecar/lambda-venv}"
if [ "$(cat "$venv/.packages" 2>/dev/null)" != "$PACKAGES" ]; then
  echo "installing $PACKAGES into $venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # one word per package
  "$venv/bin/pip" install --quiet --disable-pip-version-check $PACKAGES
  echo "$PACKAGES" > "$venv/.packages"
fi

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" || {
    echo "error: the Rust standard library for $target is not installed, and rustup could not fetch it;" >&2
    echo "       package $arch on a machine where \`rustup target add $target\` works" >&2
    exit 1
  }
fi

# symbols stripped: a smaller package and a faster cold start
PATH="$venv/bin:$PATH" CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo zigbuild --release --locked -p authz-sidecar --target "$target.2.34"

target_dir="${CARGO_TARGET_DIR:-target}"
stage="$target_dir/lambda/$arch"
zip="$target_dir/lambda/authz-account-pool-$arch.zip"
rm -rf "$stage" "$zip"
mkdir -p "$stage"
install -m 0755 "$target_dir/$target/release/authz-sidecar" "$stage/bootstrap"
cp -R policies entities "$stage/"
rm -rf "$stage/policies/tests"
cp "$config" "$stage/sidecar.toml"
zip_path="$(cd "$(dirname "$zip")" && pwd)/$(basename "$zip")"
(cd "$stage" && zip -qr -X "$zip_path" bootstrap policies entities sidecar.toml)
"$stage/bootstrap" --version >/dev/null 2>&1 || [ "$arch" != x86_64 ] || {
  echo "error: the packaged binary does not run" >&2; exit 1
}
echo "$zip ($(du -h "$zip" | cut -f1)): upload it and deploy deploy/lambda/account-pool.yaml with CodeKey=$(basename "$zip")"
