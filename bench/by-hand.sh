# Sourced by the benchmarks run by hand (bench/sweep-memory.sh, bench/threads.sh), from
# the repository's root: the release build's driver and oha, a work directory, and the
# processes they start (`pids`), all stopped and removed on exit.
target="${CARGO_TARGET_DIR:-target}"
loadbench="$target/release/loadbench"
oha="${OHA:-$HOME/.cache/authz-sidecar/tools/bin/oha}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Start the upstream and the sidecar `$1` on "$work/config.toml" (its output in
# "$work/sidecar.log"), each behind the words of `servers` (e.g. `taskset -c 0`), and
# wait until /readyz answers; `sidecar_pid` is the sidecar's. glibc's malloc settings are
# deploy/Dockerfile's image's, unless the environment sets GLIBC_TUNABLES itself (empty:
# glibc's defaults).
servers=()
start() {
  "${servers[@]}" "$loadbench" upstream --listen 127.0.0.1:18190 >/dev/null 2>&1 &
  pids+=($!)
  GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.mmap_threshold=131072}" \
    "${servers[@]}" "$1" serve --config "$work/config.toml" >"$work/sidecar.log" 2>&1 &
  sidecar_pid=$!
  pids+=("$sidecar_pid")
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null http://127.0.0.1:18182/readyz && break
    sleep 0.1
  done
}
