#!/usr/bin/env bash
# Instructions per request on one hot path, counted by callgrind (repeatable,
# unlike timings on a shared 2-core machine): polygate (1 worker, the default
# config on the bench ports) under valgrind with instrumentation switched on
# after start-up; one keep-alive client PUTs the item once, then GETs it N
# times.  Needs the stack up (scripts/stack.sh up).
#
#   bench/hotpath.sh [PATH [BODY]]    default: /v1/sessions/hot '{"user_id":"u"}'
#   POLYGATE_BIN=… N=10000 bench/hotpath.sh /v1/users/hot '{"email":"hot@example.com"}'
#   bench/hotpath.sh /health          (no PUT: the HTTP path alone)
#   QUERY='{"where":{"status":"PENDING"},"order_by":["-placed_at"],"limit":50}' \
#     bench/hotpath.sh /v1/orders/_query   (POSTs QUERY N times, no PUT first)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
BIN=${POLYGATE_BIN:-$ROOT/build/release/polygate}
URLPATH=${1:-/v1/sessions/hot}
BODY=${2-'{"user_id":"u"}'}
QUERY=${QUERY:-}
[[ $URLPATH == /health || -n $QUERY ]] && BODY=
N=${N:-10000}
PORT=${BENCH_PORT:-18180}
TMP=$ROOT/bench/results/tmp
mkdir -p "$TMP"
sed -e "s/^listen: .*/listen: 127.0.0.1:$PORT/" \
	-e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$((PORT + 1010))/" \
	-e "s/^workers: .*/workers: 1/" -e "s/^log_level: .*/log_level: warn/" \
	-e "s#^\(    shard_map: \).*#\1$ROOT/config/orders.shardmap.yaml#" \
	"$ROOT/config/polygate.yaml" >"$TMP/hotpath.yaml"
OUT=$TMP/hotpath.callgrind
rm -f "$OUT"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
	"$BIN" -c "$TMP/hotpath.yaml" >"$TMP/hotpath.log" 2>&1 &
VG=$!
trap 'kill -TERM $VG 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	curl -s -o /dev/null "http://127.0.0.1:$PORT/health" && break
	sleep 0.2
done
/usr/bin/python3 - "$PORT" "$URLPATH" "$BODY" 0 <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
if sys.argv[3]:
    c.request("PUT", sys.argv[2], body=sys.argv[3].encode())
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
PY
callgrind_control -i on $VG >/dev/null 2>&1
/usr/bin/python3 - "$PORT" "$URLPATH" "$N" "$QUERY" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
query = sys.argv[4].encode() or None
for _ in range(int(sys.argv[3])):
    c.request("POST" if query else "GET", sys.argv[2], body=query)
    r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body[:300])
PY
callgrind_control -i off $VG >/dev/null 2>&1
kill -TERM $VG
wait $VG || true
trap - EXIT
total=$(callgrind_annotate "$OUT" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
METHOD=GET
[[ -n $QUERY ]] && METHOD=POST
echo "$METHOD $URLPATH: $N requests, $total instructions, $((total / N)) per request ($OUT)"
