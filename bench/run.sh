#!/usr/bin/env bash
# The end-to-end load benchmark in one command (see bench/README.md):
#
#   bash bench/run.sh [--out FILE] [--no-sweep] [--duration 8s] [...]   (loadbench run --help)
#   bash bench/run.sh directory [--users 100000] [--active 1000] [...]  (loadbench directory --help)
#
# Installs what it needs (nginx from Debian, oha from the Rust registry, into a cache outside the
# clone), builds the sidecar and the driver in release mode, and runs the driver under a
# time limit. The driver stops every process it starts; `timeout` stops the whole
# process group if the driver itself hangs.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
TOOLS="${AUTHZ_BENCH_TOOLS:-$HOME/.cache/authz-sidecar/tools}"
OHA_VERSION="1.16.0"
TIME_LIMIT="${AUTHZ_BENCH_TIME_LIMIT:-20m}"

if [ "${1:-}" = directory ]; then
    shift
    cargo build --release -p authz-sidecar -p authz-sidecar-bench --bin authz-sidecar --bin loadbench
    exec timeout --kill-after=15s "$TIME_LIMIT" "$CARGO_TARGET_DIR/release/loadbench" directory \
        --sidecar "$CARGO_TARGET_DIR/release/authz-sidecar" "$@"
fi

NGINX="$(command -v nginx || true)"
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
    echo "bench: installing nginx-light (Debian)" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null
    NGINX=/usr/sbin/nginx
    # the package starts a system nginx on :80; the benchmark runs its own
    $SUDO systemctl stop nginx 2>/dev/null || $SUDO service nginx stop 2>/dev/null || true
fi

OHA="$TOOLS/bin/oha"
if ! "$OHA" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
    echo "bench: installing oha $OHA_VERSION (the Rust registry) into $TOOLS" >&2
    cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
fi

cargo build --release -p authz-sidecar -p authz-sidecar-bench --bin authz-sidecar --bin loadbench

exec timeout --kill-after=15s "$TIME_LIMIT" "$CARGO_TARGET_DIR/release/loadbench" run \
    --oha "$OHA" --nginx "$NGINX" --sidecar "$CARGO_TARGET_DIR/release/authz-sidecar" "$@"
