#!/usr/bin/env bash
# Where one sidecar's CPU goes, thread by thread, with the forward path saturated: each
# thread's user and system CPU in µs per forwarded request, and its voluntary and
# involuntary context switches a second, measured by hand from /proc. A change that
# adds, removes or moves a thread changes how the kernel shares the cores as much as
# what the threads run: compare two binaries by alternating runs of both (see
# bench/README.md, "A runtime per core").
#
#   bash bench/threads.sh [SIDECAR] [SECONDS] [CONNECTIONS]
#
# PIN=1 pins the sidecar and its upstream to CPU 0 and oha to CPU 1, as
# `bench/run.sh --pin` does. Needs a release build (`cargo build --release -p
# authz-sidecar -p authz-sidecar-bench --bin authz-sidecar --bin loadbench`) and oha
# (scripts/test-tools.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/by-hand.sh
sidecar="${1:-$target/release/authz-sidecar}"
seconds="${2:-4}"
connections="${3:-50}"
load=()
if [ "${PIN:-0}" = 1 ]; then
  servers=(taskset -c 0) load=(taskset -c 1)
fi

"$loadbench" workload --policies 10 --entities 100 --dir "$work" >/dev/null
token="$("$loadbench" token --jwks "$work/jwks.json")"
start "$sidecar"
call=(-c "$connections" -H "authorization: Bearer $token" -H "x-amzn-vpce-id: vpce-0a1a000000000001a"
  -H "x-forwarded-for: 10.1.2.3" http://127.0.0.1:18181/studio/user-1/team1)
"${load[@]}" "$oha" --no-tui -n 3000 "${call[@]}" >/dev/null

# thread id, name, user and system ticks, voluntary and involuntary switches
threads() {
  for task in /proc/"$sidecar_pid"/task/*; do
    echo "$(basename "$task") $(tr ' ' _ <"$task/comm") $(awk '{print $14, $15}' "$task/stat")" \
      "$(awk '/ctxt_switches/ {print $2}' "$task/status" | tr '\n' ' ')"
  done | sort
}
threads >"$work/before"
answered="$("${load[@]}" "$oha" --no-tui -z "${seconds}s" "${call[@]}" | awk '/\[200\]/ {print $2}')"
threads >"$work/after"
echo "forwarded: ${answered:-0} in ${seconds} s ($((${answered:-0} / seconds)) a second)"
[ "${answered:-0}" -gt 0 ] || exit 1
hertz="$(getconf CLK_TCK)"
join "$work/before" "$work/after" | awk -v n="$answered" -v s="$seconds" -v hz="$hertz" '
  { usr = ($8 - $3) * 1e6 / hz / n; sys = ($9 - $4) * 1e6 / hz / n
    if (usr + sys >= 0.05)
      printf "  %-18s user %5.1f  system %5.1f µs a request   switches a second: voluntary %6d  involuntary %6d\n",
        $2, usr, sys, ($10 - $5) / s, ($11 - $6) / s }'
