#!/usr/bin/env bash
# Profile polygate once under a short bench load with callgrind (this machine
# has no hardware counters for perf: `perf stat -e instructions` answers
# "not supported").  Needs the stack up and the data `make bench` seeded.
#
#   bench/profile.sh [OPS]     default OPS: session_get,user_get,cart_inc
#
# polygate runs under valgrind --tool=callgrind with 1 worker on the bench
# ports; the load is bounded (BENCH_PROFILE_SECS, 15 s, 8 clients); the
# output is bench/results/tmp/callgrind.out and callgrind.txt (inclusive and
# exclusive cost per function).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
POLYGATE_BIN=${POLYGATE_BIN:-$ROOT/build/release/polygate}
BENCH_BIN=${BENCH_BIN:-$ROOT/build/release/polygate-bench}
PORT=${BENCH_PORT:-18180}
ADMIN_PORT=${BENCH_ADMIN_PORT:-19190}
SECS=${BENCH_PROFILE_SECS:-15}
OPS=${1:-session_get,user_get,cart_inc}
TMP=$ROOT/bench/results/tmp
mkdir -p "$TMP"

sed -e "s/^listen: .*/listen: 127.0.0.1:$PORT/" \
	-e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$ADMIN_PORT/" \
	-e "s/^workers: .*/workers: 1/" \
	-e "s/^log_level: .*/log_level: warn/" \
	-e "s#^\(    shard_map: \).*#\1$ROOT/config/orders.shardmap.yaml#" \
	config/polygate.yaml >"$TMP/polygate-profile.yaml"

rm -f "$TMP/callgrind.out"
setsid valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/callgrind.out" \
	"$POLYGATE_BIN" -c "$TMP/polygate-profile.yaml" >"$TMP/callgrind.log" 2>&1 </dev/null &
VG_PID=$!
cleanup() {
	if kill -0 "$VG_PID" 2>/dev/null; then
		kill -TERM "$VG_PID"
		for _ in $(seq 1 150); do
			kill -0 "$VG_PID" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "$VG_PID" 2>/dev/null && kill -KILL "$VG_PID"
	fi
	wait "$VG_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 150); do
	curl -sf -m 1 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
	sleep 0.2
done
# the keys the load reads (sessions, carts, users; the slow catalog and the
# orders are left out), then collection on: start-up and seeding are not in
# the profile
"$BENCH_BIN" seed --gw "127.0.0.1:$PORT" -c 8 -k 5000 --product-keys 1 --no-orders >&2
callgrind_control -i on "$VG_PID" >/dev/null
"$BENCH_BIN" run --gw "127.0.0.1:$PORT" -c 8 -d "$SECS" -w 1 --ops "$OPS" --modes gateway |
	grep '^RESULT' >&2
cleanup
trap - EXIT
callgrind_annotate --inclusive=no "$TMP/callgrind.out" 2>/dev/null | head -60 >"$TMP/callgrind.txt"
callgrind_annotate --inclusive=yes "$TMP/callgrind.out" 2>/dev/null | head -80 >"$TMP/callgrind-inclusive.txt"
echo "bench: wrote $TMP/callgrind.txt and callgrind-inclusive.txt" >&2
