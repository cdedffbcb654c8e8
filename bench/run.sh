#!/usr/bin/env bash
# polygate benchmark (docs/performance.md): `make bench` runs this.
#
# Brings up the local stack, starts its OWN polygate (ports 18180/19190, auth
# off, a generated copy of config/polygate.yaml under bench/results/tmp),
# seeds data through it, runs every operation through polygate and straight
# to its store with polygate-bench, then the scaling figures (1 vs 2 workers,
# 10,000 idle connections, scatter-gather over 1/2/4 shards), stops its
# polygate by pid and writes bench/results/latest.md and latency.png.
#
# It prints figures; it never passes or fails on them.  Everything is bounded:
# each measured run lasts BENCH_SECS (5) after BENCH_WARMUP (1) seconds, and
# polygate-bench has its own hard time limits.
#
# The databases: by default a PRIVATE instance of the local stack
# (scripts/stack.sh with POLYGATE_STACK_DIR=bench/results/tmp/stack and ports
# 55532 53406 53407 56479 57117, Toxiproxy 8574), so that other work on the shared stack
# (integration tests stopping servers) cannot disturb the figures;
# BENCH_STACK=shared uses the usual one.  The private stack is stopped at the
# end unless BENCH_KEEP_STACK=1.
#
# Knobs: BENCH_SECS, BENCH_WARMUP, BENCH_CONNS (32), BENCH_IDLE_CONNS (10000),
# BENCH_PORT (18180), BENCH_ADMIN_PORT (19190), BENCH_PROFILE=1 (perf record
# the gateway during a storefront run: bench/results/tmp/perf.txt),
# POLYGATE_BIN, BENCH_BIN.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
POLYGATE_BIN=${POLYGATE_BIN:-$ROOT/build/release/polygate}
BENCH_BIN=${BENCH_BIN:-$ROOT/build/release/polygate-bench}
PORT=${BENCH_PORT:-18180}
ADMIN_PORT=${BENCH_ADMIN_PORT:-19190}
SECS=${BENCH_SECS:-5}
WARM=${BENCH_WARMUP:-1}
CONNS=${BENCH_CONNS:-32}
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
OUT=$ROOT/bench/results
TMP=$OUT/tmp
GW_PID=

log() { echo "bench: $*" >&2; }

mkdir -p "$TMP"
rm -f "$TMP"/*.txt "$TMP"/*.md "$TMP"/*.dat

# 10,000 client connections in the bench and as many in polygate: raise the
# descriptor limit of this shell (both processes inherit it).
want_fd=$((IDLE_CONNS + 1024))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt $want_fd ]]; then
	log "fd hard limit $hard < $want_fd: the idle test will use fewer connections"
	IDLE_CONNS=$((hard - 1024))
	want_fd=$hard
fi
ulimit -n "$want_fd"

if [[ ${BENCH_STACK:-private} == private ]]; then
	export POLYGATE_STACK_DIR=$TMP/stack POLYGATE_PG_PORT=55532 POLYGATE_MYSQL_A_PORT=53406 \
		POLYGATE_MYSQL_B_PORT=53407 POLYGATE_REDIS_PORT=56479 POLYGATE_FERRETDB_PORT=57117 \
		POLYGATE_TOXIPROXY_PORT=8574
fi
PG_PORT=${POLYGATE_PG_PORT:-55432}
MA_PORT=${POLYGATE_MYSQL_A_PORT:-53306}
MB_PORT=${POLYGATE_MYSQL_B_PORT:-53307}
REDIS_PORT=${POLYGATE_REDIS_PORT:-56379}
FERRET_PORT=${POLYGATE_FERRETDB_PORT:-57017}
scripts/stack.sh up >&2
if [[ ! -x $POLYGATE_BIN || ! -x $BENCH_BIN ]]; then
	make --no-print-directory bench-build >&2
fi

HAVE_ORDERS=0
if grep -qE '^  orders:' config/polygate.yaml; then
	HAVE_ORDERS=1
fi
# order_create last: the orders it adds (customers nc*, PENDING) would
# otherwise change what the queries after it read
ORDER_OPS=order_get,order_last10,order_by_status,order_create

# ---- polygate ----------------------------------------------------------------------

# gen_config WORKERS SHARDMAP OUTFILE: the default config on the bench ports
gen_config() {
	local workers=$1 map=$2 out=$3
	sed -e "s/^listen: .*/listen: 127.0.0.1:$PORT/" \
		-e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$ADMIN_PORT/" \
		-e "s/^workers: .*/workers: $workers/" \
		-e "s/^log_level: .*/log_level: warn/" \
		-e "s#^\(    shard_map: \).*#\1$map#" \
		-e "s/port=55432/port=$PG_PORT/; s/127.0.0.1:56379/127.0.0.1:$REDIS_PORT/" \
		-e "s/127.0.0.1:57017/127.0.0.1:$FERRET_PORT/" \
		config/polygate.yaml >"$out"
	grep -q '^  enabled: false' "$out" || {
		log "config/polygate.yaml no longer switches auth off; the bench needs it off"
		exit 1
	}
}

# gen_map N OUTFILE: the orders map with its first shards (1: orders-0;
# 2: one per MariaDB server; 4: all)
gen_map() {
	local n=$1 out=$2
	{
		sed -n '/^version:/p; /^slots:/p; /^vnodes:/p' config/orders.shardmap.yaml
		echo "shards:"
		case $n in
		1) grep -E 'name: orders-0' config/orders.shardmap.yaml ;;
		2) grep -E 'name: orders-(0|2)' config/orders.shardmap.yaml ;;
		*) grep -E 'name: orders-[0-9]' config/orders.shardmap.yaml ;;
		esac
	} | sed -e "s/:53306/:$MA_PORT/; s/:53307/:$MB_PORT/" >"$out"
}

start_gw() { # CONFIG
	"$POLYGATE_BIN" -t -c "$1" >&2
	setsid "$POLYGATE_BIN" -c "$1" >"$TMP/polygate.log" 2>&1 </dev/null &
	GW_PID=$!
	for _ in $(seq 1 100); do
		if curl -sf -m 1 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$GW_PID" 2>/dev/null || break
		sleep 0.2
	done
	log "polygate did not come up; its log:"
	tail -20 "$TMP/polygate.log" >&2
	exit 1
}

stop_gw() {
	if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then
		kill -TERM "$GW_PID"
		for _ in $(seq 1 75); do
			kill -0 "$GW_PID" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "$GW_PID" 2>/dev/null && kill -KILL "$GW_PID"
		wait "$GW_PID" 2>/dev/null || true
	fi
	GW_PID=
}
finish() {
	stop_gw
	if [[ ${BENCH_STACK:-private} == private && ${BENCH_KEEP_STACK:-0} != 1 ]]; then
		scripts/stack.sh down >&2 || true
	fi
}
trap finish EXIT
trap 'exit 130' INT TERM

# Orders the previous runs created (customers nc*) are deleted, so that every
# run reads the same data.
clean_orders() {
	grep -oE 'mysql://[^"]+' "$TMP/orders-4.shardmap.yaml" | while read -r dsn; do
		local hp=${dsn#mysql://*@} db=${dsn##*/}
		local host=${hp%%:*} port=${hp#*:}
		port=${port%%/*}
		mysql -h "$host" -P "$port" -uroot "$db" -e "DELETE FROM orders WHERE customer_id LIKE 'nc%'" \
			2>/dev/null || true
	done
}

B=("$BENCH_BIN")
common=(--gw "127.0.0.1:$PORT" -c "$CONNS" -d "$SECS" -w "$WARM" --redis "127.0.0.1:$REDIS_PORT"
	--pg "host=127.0.0.1 port=$PG_PORT dbname=polygate user=postgres"
	--mongo "mongodb://127.0.0.1:$FERRET_PORT/?serverSelectionTimeoutMS=2000&socketTimeoutMS=10000")

# ---- 1. every operation, gateway and direct, 2 workers --------------------------------

gen_map 4 "$TMP/orders-4.shardmap.yaml"
gen_config 2 "$TMP/orders-4.shardmap.yaml" "$TMP/polygate-w2.yaml"
start_gw "$TMP/polygate-w2.yaml"
log "polygate pid $GW_PID (2 workers) on 127.0.0.1:$PORT; seeding"
seed_args=()
[[ $HAVE_ORDERS == 1 ]] || seed_args=(--no-orders)
"${B[@]}" seed --gw "127.0.0.1:$PORT" "${seed_args[@]}" | tee "$TMP/seed.txt" >&2 || true
ops=session_get,session_put,cart_inc,user_get,product_get,storefront
skip=()
if [[ $HAVE_ORDERS == 1 ]]; then
	clean_orders
	ops=$ops,$ORDER_OPS
else
	skip=(--skip "$ORDER_OPS=orders domain not configured")
fi
log "operations: $ops (${SECS}s each, gateway then direct)"
"${B[@]}" run "${common[@]}" --pid "$GW_PID" --ops "$ops" --shardmap "$TMP/orders-4.shardmap.yaml" \
	--md "$TMP/ops.md" --plot "$TMP/latency.dat" "${skip[@]}" | tee "$TMP/ops.txt" >&2

# one client: the added latency without queueing (single-key operations)
one=session_get,user_get
[[ $HAVE_ORDERS == 1 ]] && one=$one,order_get
"${B[@]}" run "${common[@]}" -c 1 --pid "$GW_PID" --ops "$one" --shardmap "$TMP/orders-4.shardmap.yaml" \
	--md "$TMP/one.md" | grep '^RESULT' >&2

# ---- 2. 10,000 idle keep-alive connections ---------------------------------------------

log "idle connections: $IDLE_CONNS"
"${B[@]}" idle --gw "127.0.0.1:$PORT" -c "$IDLE_CONNS" --pid "$GW_PID" --hold 5 --sample 500 |
	tee "$TMP/idle.txt" >&2

# ---- optional profile -------------------------------------------------------------------

if [[ ${BENCH_PROFILE:-0} == 1 ]]; then
	log "profiling polygate with perf during a storefront run"
	perf record -F 999 -g -o "$TMP/perf.data" -p "$GW_PID" -- sleep $((SECS + 1)) 2>/dev/null &
	perf_pid=$!
	"${B[@]}" run "${common[@]}" --ops session_get,user_get --modes gateway >/dev/null
	wait "$perf_pid" || true
	perf report -i "$TMP/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
		grep -E '^ +[0-9]' | head -40 >"$TMP/perf.txt" || true
fi
stop_gw

# ---- 3. 1 worker against 2 -------------------------------------------------------------

for w in 1 2; do
	gen_config "$w" "$TMP/orders-4.shardmap.yaml" "$TMP/polygate-w$w.yaml"
	start_gw "$TMP/polygate-w$w.yaml"
	log "workers: $w"
	"${B[@]}" run "${common[@]}" --pid "$GW_PID" --ops session_get,user_get,storefront \
		--modes gateway | grep '^RESULT' | sed "s/^RESULT/WORKERS=$w/" | tee -a "$TMP/workers.txt" >&2
	stop_gw
done

# ---- 4. scatter-gather over 1, 2, 4 shards -----------------------------------------------

if [[ $HAVE_ORDERS == 1 ]]; then
	clean_orders
	for n in 1 2 4; do
		gen_map "$n" "$TMP/orders-$n.shardmap.yaml"
		gen_config 2 "$TMP/orders-$n.shardmap.yaml" "$TMP/polygate-s$n.yaml"
		start_gw "$TMP/polygate-s$n.yaml"
		log "scatter-gather over $n shard(s)"
		"${B[@]}" run "${common[@]}" --ops order_by_status --shardmap "$TMP/orders-$n.shardmap.yaml" |
			grep '^RESULT' | sed "s/^RESULT/SHARDS=$n/" | tee -a "$TMP/scatter.txt" >&2
		# one client: the fan-out's own latency, without 32 queries queueing for 2 cores
		"${B[@]}" run "${common[@]}" -c 1 --ops order_by_status --shardmap "$TMP/orders-$n.shardmap.yaml" |
			grep '^RESULT' | sed "s/^RESULT/SHARDS1C=$n/" | tee -a "$TMP/scatter.txt" >&2
		stop_gw
	done
fi

# ---- the report -----------------------------------------------------------------------------

field() { # LINE NAME
	sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"
}

{
	echo "# polygate benchmark — latest results"
	echo
	echo "Written by \`make bench\` (bench/run.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'); method and targets:"
	echo "[docs/performance.md](../../docs/performance.md). Figures, not pass/fail."
	echo
	echo "## Machine"
	echo
	echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), nproc = $(nproc)"
	echo "- memory: $(free -h | awk '/^Mem:/ {print $2}'), kernel $(uname -r)"
	echo "- $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"')"
	echo "- $(redis-server --version | awk '{print "Redis", $3}' | tr -d 'v='), PostgreSQL $(psql --version | awk '{print $3}'), $(mysql --version | sed -E 's/.*Distrib ([^,]+),.*/MariaDB \1/'), FerretDB $(/usr/local/bin/ferretdb --version 2>/dev/null | sed -n 's/.*version: *\(.*\)/\1/p' | head -1) (SQLite backend)"
	echo "- libevent $(pkg-config --modversion libevent), hiredis $(pkg-config --modversion hiredis), libpq $(pkg-config --modversion libpq), MariaDB Connector/C $(pkg-config --modversion libmariadb), mongo-c-driver $(pkg-config --modversion libmongoc-1.0)"
	echo "- databases: the local stack (scripts/stack.sh), ${BENCH_STACK:-private} instance, on loopback"
	echo "- polygate $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), 2 workers unless said; the load generator, polygate and all databases share these cores"
	echo
	echo "## Gateway against direct (32 concurrent clients)"
	echo
	cat "$TMP/ops.md"
	echo "## The same with 1 client (no queueing: the hop's own latency)"
	echo
	sed -n '/^| operation | gateway req/,$p' "$TMP/one.md"
	echo "## Idle keep-alive connections"
	echo
	idle=$(grep '^IDLE conns' "$TMP/idle.txt" || true)
	per=$(sed -n 's/^IDLE per_conn_kib=//p' "$TMP/idle.txt")
	echo "| connections opened | served a first request | still open after 5 s idle | sample answered | gateway RSS before | RSS with them held | per connection |"
	echo "|---:|---:|---:|---:|---:|---:|---:|"
	echo "| $(field "$idle" conns) | $(field "$idle" served) | $(field "$idle" held_after_hold) | $(field "$idle" sample_ok) / $(field "$idle" sample) | $(field "$idle" rss_before_kib) KiB | $(field "$idle" rss_held_kib) KiB | ${per:-n/a} KiB |"
	echo
	echo "## Workers: 1 against 2 (gateway mode)"
	echo
	echo "| operation | 1 worker req/s | 2 workers req/s | 1 worker p50 µs | 2 workers p50 µs | CPU ms / 1,000 req (1 / 2 workers) |"
	echo "|---|---:|---:|---:|---:|---:|"
	for op in session_get user_get storefront; do
		l1=$(grep "^WORKERS=1 op=$op " "$TMP/workers.txt" || true)
		l2=$(grep "^WORKERS=2 op=$op " "$TMP/workers.txt" || true)
		echo "| $op | $(field "$l1" rps) | $(field "$l2" rps) | $(field "$l1" p50_us) | $(field "$l2" p50_us) | $(field "$l1" gw_cpu_ms_per_1k) / $(field "$l2" gw_cpu_ms_per_1k) |"
	done
	echo
	echo "## Scatter-gather: orders by status, newest 50, over 1, 2 and 4 shards"
	echo
	echo "With $CONNS clients:"
	echo
	if [[ $HAVE_ORDERS == 1 ]]; then
		base=$(grep '^SHARDS=1 op=order_by_status mode=gateway' "$TMP/scatter.txt" | head -1)
		b50=$(field "$base" p50_us)
		echo "| shards | gateway req/s | gateway p50 µs | gateway p99 µs | p50 / 1-shard p50 | direct req/s | direct p50 µs | direct p99 µs |"
		echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
		for n in 1 2 4; do
			g=$(grep "^SHARDS=$n op=order_by_status mode=gateway" "$TMP/scatter.txt" || true)
			d=$(grep "^SHARDS=$n op=order_by_status mode=direct" "$TMP/scatter.txt" || true)
			g50=$(field "$g" p50_us)
			ratio=$(awk -v a="$g50" -v b="$b50" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
			echo "| $n | $(field "$g" rps) | $g50 | $(field "$g" p99_us) | $ratio | $(field "$d" rps) | $(field "$d" p50_us) | $(field "$d" p99_us) |"
		done
		echo
		echo "With 1 client (the fan-out's own latency):"
		echo
		base1=$(grep '^SHARDS1C=1 op=order_by_status mode=gateway' "$TMP/scatter.txt" | head -1)
		b150=$(field "$base1" p50_us)
		echo "| shards | gateway p50 µs | gateway p99 µs | p50 / 1-shard p50 | direct p50 µs | direct p99 µs |"
		echo "|---:|---:|---:|---:|---:|---:|"
		for n in 1 2 4; do
			g=$(grep "^SHARDS1C=$n op=order_by_status mode=gateway" "$TMP/scatter.txt" || true)
			d=$(grep "^SHARDS1C=$n op=order_by_status mode=direct" "$TMP/scatter.txt" || true)
			g50=$(field "$g" p50_us)
			ratio=$(awk -v a="$g50" -v b="$b150" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
			echo "| $n | $g50 | $(field "$g" p99_us) | $ratio | $(field "$d" p50_us) | $(field "$d" p99_us) |"
		done
		echo
		echo "Each run uses a shard map with the first 1, 2 or 4 shards (1: orders-0; 2: orders-0 and"
		echo "orders-2, one per MariaDB server); every shard holds about a quarter of the seeded orders,"
		echo "so each shard does the same work in every run."
	else
		echo "skipped: orders domain not configured"
	fi
	if [[ -s $TMP/perf.txt ]]; then
		echo
		echo "## Profile (perf, gateway, session_get + user_get)"
		echo
		echo '```'
		cat "$TMP/perf.txt"
		echo '```'
	fi
	echo
	echo "![latency percentiles](latency.png)"
} >"$OUT/latest.md"

# ---- the plot ---------------------------------------------------------------------------------

nblocks=$(grep -c '^# ' "$TMP/latency.dat" || true)
if [[ $nblocks -gt 0 ]]; then
	cols=3
	rows=$(((nblocks + cols - 1) / cols))
	{
		echo "set terminal pngcairo size 1500,$((rows * 380 + 60)) font 'DejaVu Sans,10'"
		echo "set output '$OUT/latency.png'"
		echo "set multiplot layout $rows,$cols title 'polygate: latency percentiles, gateway vs direct ($CONNS concurrent clients, µs, log scale)'"
		echo "set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8 border -1"
		echo "set termoption noenhanced"
		echo "set logscale y; set yrange [10:*]; set grid ytics; set key top left; set ylabel 'µs'"
		i=0
		grep '^# ' "$TMP/latency.dat" | sed 's/^# //' | while read -r op; do
			echo "set title '$op'"
			echo "plot '$TMP/latency.dat' index $i using 2:xtic(1) title 'gateway' lc rgb '#d95f02', '' index $i using 3 title 'direct' lc rgb '#1b9e77'"
			i=$((i + 1))
		done
		echo "unset multiplot"
	} >"$TMP/latency.gp"
	gnuplot "$TMP/latency.gp"
fi
log "wrote $OUT/latest.md and $OUT/latency.png"
