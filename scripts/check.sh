#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this and nothing else):
# formatting, lints (which keep the request path panic-free), the shipped policies
# validated and their decision tables run by the real binary, the deployment artifacts
# checked by their fields' own tools, then every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# rustfmt and clippy come with rustup's default profile; add them if a minimal profile left
# them out, and say so plainly if that is not possible.
for component in rustfmt clippy; do
  command="fmt"; [ "$component" = clippy ] && command="clippy"
  if ! cargo "$command" --version >/dev/null 2>&1; then
    rustup component add "$component" || { echo "error: cargo $command is missing and rustup cannot add $component" >&2; exit 1; }
  fi
done

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== shipped policies: validate and decision tables"
cargo build --locked -p authz-sidecar
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/debug/authz-sidecar" validate --policies policies --entities entities
"$target_dir/debug/authz-sidecar" test --require-coverage --policies policies --entities entities

echo "== deployment artifacts: Dockerfile, CloudFormation, Kubernetes, shipped configurations"
bash scripts/deploy-check.sh "$target_dir/debug/authz-sidecar"

echo "== test tools (moto's AWS emulator, the cedar CLI)"
bash scripts/test-tools.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# Criterion runs each benchmark once in its test mode (a debug build, about half a
# minute): a workload that no longer decides as the decision tables say stops here
# instead of on the next person to measure.
echo "== benchmarks, each run once"
cargo test --locked -p authz-sidecar-bench --bench decision
