#!/usr/bin/env bash
# The memory of one sidecar on the sweep's largest workload (1,000 policies, 10,000
# entities), measured by hand: RSS when /readyz first answers, after 4 s of the forward
# path at 50 connections, and after RELOADS reloads (a comment appended to a policy
# file, each reload waited for in the log; 0: none). Compare two binaries by alternating
# starts of fresh copies of both (the page cache moves the binary's share; see
# bench/README.md). The sidecar runs with the image's GLIBC_TUNABLES, as bench/run.sh's do;
# `GLIBC_TUNABLES= bash bench/sweep-memory.sh` measures it with glibc's defaults.
#
#   bash bench/sweep-memory.sh [SIDECAR] [POLICIES] [ENTITIES] [RELOADS]
#
# Needs a release build (`cargo build --release -p authz-sidecar -p authz-sidecar-bench
# --bin authz-sidecar --bin loadbench`) and oha (scripts/test-tools.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/by-hand.sh
sidecar="${1:-$target/release/authz-sidecar}"
policies="${2:-1000}"
entities="${3:-10000}"
reloads="${4:-0}"

"$loadbench" workload --policies "$policies" --entities "$entities" --dir "$work" >/dev/null
token="$("$loadbench" token --jwks "$work/jwks.json")"

start "$sidecar"
memory() { grep -E 'VmHWM|RssAnon|RssFile' "/proc/$sidecar_pid/status" | awk '{printf "%s %.1f MiB  ", $1, $2 / 1024}'; }
echo "ready: $(memory)"
"$oha" --no-tui -z 4s -c 50 -H "authorization: Bearer $token" -H "x-amzn-vpce-id: vpce-0a1a000000000001a" \
  -H "x-forwarded-for: 10.1.2.3" http://127.0.0.1:18181/studio/user-1/team1 | grep -E 'Requests/sec|\[200\]' || true
echo "after: $(memory)"
for i in $(seq 1 "$reloads"); do
  echo "// reload $i" >>"$work/policies/generated.cedar"
  for _ in $(seq 1 300); do
    [ "$(grep -c 'policy snapshot reloaded' "$work/sidecar.log")" -ge "$i" ] && break
    sleep 0.1
  done
done
if [ "$reloads" -gt 0 ]; then
  sleep 1
  echo "after $(grep -c 'policy snapshot reloaded' "$work/sidecar.log") reloads: $(memory)"
fi
