#!/usr/bin/env bash
# polygate local stack: real database servers on loopback, for the integration
# tests and benchmarks.  Debian 12, run as root.
#
#   scripts/stack.sh up            install what is missing, start everything,
#                                  create the databases, print status
#   scripts/stack.sh down          stop what up started (data is kept)
#   scripts/stack.sh status        one line per server: name port up|down pid
#                                  (exit 1 if any server is down)
#   scripts/stack.sh stop NAME     stop one server  (pg mysql-a mysql-b redis ferretdb toxiproxy etcd)
#   scripts/stack.sh start NAME    start one server again (fast: no apt, no build)
#   scripts/stack.sh restart NAME  stop + start
#   scripts/stack.sh reset         down, then delete all stack data
#
# Servers (127.0.0.1 only; ports overridable through the environment):
#   pg        PostgreSQL 15   POLYGATE_PG_PORT=55432       db polygate, user postgres, trust auth
#   mysql-a   MariaDB 10.11   POLYGATE_MYSQL_A_PORT=53306  orders_0 orders_1 orders_4 orders_ref
#   mysql-b   MariaDB 10.11   POLYGATE_MYSQL_B_PORT=53307  orders_2 orders_3   (root, no password)
#   redis     Redis 7         POLYGATE_REDIS_PORT=56379    no persistence
#   ferretdb  FerretDB 1.24   POLYGATE_FERRETDB_PORT=57017 MongoDB wire, SQLite backend
#   toxiproxy Toxiproxy 2.5   POLYGATE_TOXIPROXY_PORT=8474 fault-injection TCP proxy (HTTP API);
#                             the integration tests put their own proxies in front of the
#                             servers above and drive latency, resets, timeouts through it
#   etcd      etcd 3.4        POLYGATE_ETCD_PORT=52379     the fleet's control store (docs/fleet.md):
#                             v3 HTTP/JSON gateway on the client port, peer port
#                             POLYGATE_ETCD_PEER_PORT=52380, one member, data kept
#
# Everything (data, logs, sockets, pid files) lives under $ROOT/.stack
# (POLYGATE_STACK_DIR overrides it).  Each server is started detached from the
# caller (own session, stdio to log files) and is found again only through its
# pid file, checked against the process name; nothing is ever stopped by name.
# Other instances of PostgreSQL/MariaDB/Redis on the standard ports are never
# touched.
#
# Other knobs: POLYGATE_STACK_WAIT (seconds to wait for each server, 60),
# POLYGATE_SKIP_DEPS=1 (up skips scripts/ci-deps.sh),
# POLYGATE_FERRETDB_BIN (/usr/local/bin/ferretdb), POLYGATE_PG_BIN,
# POLYGATE_TOXIPROXY_BIN (/usr/local/bin/toxiproxy-server), POLYGATE_ETCD_BIN
# (/usr/bin/etcd).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
STACK=${POLYGATE_STACK_DIR:-$ROOT/.stack}
HOST=127.0.0.1

PG_PORT=${POLYGATE_PG_PORT:-55432}
MYSQL_A_PORT=${POLYGATE_MYSQL_A_PORT:-53306}
MYSQL_B_PORT=${POLYGATE_MYSQL_B_PORT:-53307}
REDIS_PORT=${POLYGATE_REDIS_PORT:-56379}
FERRETDB_PORT=${POLYGATE_FERRETDB_PORT:-57017}
TOXIPROXY_PORT=${POLYGATE_TOXIPROXY_PORT:-8474}
ETCD_PORT=${POLYGATE_ETCD_PORT:-52379}
ETCD_PEER_PORT=${POLYGATE_ETCD_PEER_PORT:-52380}
WAIT_SECS=${POLYGATE_STACK_WAIT:-60}

PG_BIN=${POLYGATE_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_DB=polygate
MYSQL_A_DBS=(orders_0 orders_1 orders_4 orders_ref)
MYSQL_B_DBS=(orders_2 orders_3)
FERRETDB_VERSION=v1.24.0
FERRETDB_BIN=${POLYGATE_FERRETDB_BIN:-/usr/local/bin/ferretdb}
TOXIPROXY_VERSION=v2.5.0
TOXIPROXY_MODULE=github.com/Shopify/toxiproxy/v2
TOXIPROXY_BIN=${POLYGATE_TOXIPROXY_BIN:-/usr/local/bin/toxiproxy-server}
PYTHON=/usr/bin/python3

export PATH=/usr/local/go/bin:$PATH
# Never let `go` fetch another toolchain (nothing outside is reachable).
export GOTOOLCHAIN=local

SERVERS=(pg mysql-a mysql-b redis ferretdb toxiproxy etcd)
MARKER=.polygate-stack # marks a directory this script created (reset checks it)

# ---------------------------------------------------------------- helpers ---

log() { echo "stack: $*" >&2; }
die() {
	echo "stack: error: $*" >&2
	exit 1
}

# Print the last lines of a log file to stderr, then die.
die_with_log() { # LOGFILE MESSAGE
	local logfile=$1
	shift
	if [[ -f $logfile ]]; then
		echo "---- last lines of $logfile ----" >&2
		tail -n 30 "$logfile" >&2 || true
		echo "----" >&2
	fi
	die "$*"
}

# Does PID run a program called COMM?  (Guards against recycled pids.)  A
# zombie counts as gone: PID 1 may be slow to reap the daemons it inherits.
pid_is() { # PID COMM
	local stat
	[[ $1 =~ ^[0-9]+$ ]] && read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	# stat is "PID (COMM) STATE ..."
	[[ ${stat#* (} == "$2) "* ]] || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# Print the pid stored in PIDFILE if that process is alive and is COMM.
pidfile_pid() { # PIDFILE COMM
	local pid
	read -r pid 2>/dev/null <"$1" || [[ -n ${pid:-} ]] || return 1
	pid_is "$pid" "$2" || return 1
	echo "$pid"
}

port_open() { # PORT
	(exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Refuse to start on a port that something else already listens on.
require_port_free() { # NAME PORT ENVVAR
	if port_open "$2"; then
		die "$1: port $2 is already in use by a process stack.sh did not start" \
			"(see: ss -ltnp 'sport = :$2'); choose another with $3=..."
	fi
}

# Servers must not inherit any file descriptor of ours above 2: not the lock
# (fd 9, or the lock would outlive this script) and not whatever pipe the
# caller passed down (a CI runner or `make | tee` would wait for its EOF).
# shellcheck disable=SC2016
CLOSE_FDS='for f in /proc/$$/fd/*; do f=${f##*/}; [ "$f" -gt 2 ] && eval "exec $f>&-"; done; '

# Run CMD with only fds 0-2 open (the caller redirects those).
nofds() { bash -c "$CLOSE_FDS"'exec "$@"' nofds "$@"; }

# Start a command in the background in its own session, detached from the
# caller's terminal and pipes (stdin /dev/null, stdout+stderr to LOGFILE, no
# other fds).  Its pid (the exec'd program's own pid) goes to PIDFILE.
spawn() { # PIDFILE LOGFILE CMD...
	local pidfile=$1 logfile=$2
	shift 2
	rm -f "$pidfile" # a stale one (after a crash) would pass for the new one
	# shellcheck disable=SC2016
	setsid bash -c "$CLOSE_FDS"'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
		</dev/null >>"$logfile" 2>&1 &
	local i
	for i in $(seq 50); do # the pid file appears within milliseconds
		[[ -s $pidfile ]] && return 0
		sleep 0.02
	done
	die "could not start $1"
}

# Poll PROBE (a command) every 0.2 s until it succeeds, at most WAIT_SECS; fail
# early if the server process is gone.  ALIVE is a command line (split on
# spaces) that succeeds while the process runs.
wait_ready() { # NAME LOGFILE ALIVE PROBE...
	local name=$1 logfile=$2 alive=$3
	shift 3
	local deadline=$((SECONDS + WAIT_SECS))
	while ! "$@" >/dev/null 2>&1; do
		if ! $alive; then # unquoted on purpose: "cmd arg"
			die_with_log "$logfile" "$name exited during startup"
		fi
		if ((SECONDS >= deadline)); then
			die_with_log "$logfile" "$name not accepting connections after ${WAIT_SECS}s"
		fi
		sleep 0.2
	done
}

# SIGTERM the process in PIDFILE (if it is COMM), wait for it to exit (30 s,
# then SIGKILL), remove the pid file.
stop_pidfile() { # NAME PIDFILE COMM
	local name=$1 pidfile=$2 comm=$3 pid i
	if ! pid=$(pidfile_pid "$pidfile" "$comm"); then
		rm -f "$pidfile"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 300); do
		pid_is "$pid" "$comm" || break
		sleep 0.1
	done
	if pid_is "$pid" "$comm"; then
		log "$name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		while pid_is "$pid" "$comm"; do sleep 0.1; done
	fi
	rm -f "$pidfile"
	log "$name stopped (pid $pid)"
}

# The port a running server was started on, so that an `up` with a different
# POLYGATE_*_PORT does not wait on a port nobody listens to.
record_port() { # NAME PORT
	mkdir -p "$STACK/.ports"
	echo "$2" >"$STACK/.ports/$1"
}

already_running() { # NAME PORT PID
	local was=
	read -r was 2>/dev/null <"$STACK/.ports/$1" || true
	if [[ -n $was && $was != "$2" ]]; then
		die "$1 (pid $3) runs on port $was, not $2; stop it first: scripts/stack.sh stop $1"
	fi
	log "$1: already running (pid $3, port $2)"
}

ensure_stack_dir() {
	mkdir -p "$STACK"
	chmod 755 "$STACK"
	touch "$STACK/$MARKER"
}

# Serialize up/down/start/stop/reset (tests may call start/stop in parallel).
# fd 9 must not leak into the servers: see CLOSE_FDS.
take_lock() {
	ensure_stack_dir
	exec 9>"$STACK/.lock"
	flock -w 600 9 || die "could not lock $STACK/.lock"
}

short_hash() { printf '%s' "$1" | md5sum | cut -c1-12; }

# ------------------------------------------------------------- PostgreSQL ---
#
# initdb and postgres refuse to run as root, so the cluster belongs to the
# `postgres` user, which must be able to traverse every directory above it.
# If postgres can reach $STACK (the usual case: /work/..., /home/... are
# world-searchable) the cluster lives in $STACK/pg.  If it cannot (e.g. the
# repo is under /root, mode 700), we do NOT loosen permissions on the user's
# directories: the cluster goes to /var/tmp/polygate-stack-<hash of $STACK>/pg
# (persistent across reboots, unlike /tmp) and $STACK/pg is a symlink to it.
# `reset` removes both.  The choice is made once, at the first `up`.
#   $PG_BASE/data           the cluster (postmaster.pid is the pid file)
#   $PG_BASE/run            Unix socket dir (-k)
#   $PG_BASE/postgres.log   server log

pg_paths() {
	if [[ -L $STACK/pg ]]; then
		PG_BASE=$(readlink -m "$STACK/pg")
	else
		PG_BASE=$STACK/pg
	fi
	PG_DATA=$PG_BASE/data
	PG_RUN=$PG_BASE/run
	PG_LOG=$PG_BASE/postgres.log
}

pg_choose_base() {
	[[ -e $STACK/pg || -L $STACK/pg ]] && return 0
	if runuser -u postgres -- test -x "$STACK" -a -r "$STACK"; then
		mkdir -p "$STACK/pg"
	else
		local alt
		alt=/var/tmp/polygate-stack-$(short_hash "$STACK")/pg
		log "pg: user postgres cannot reach $STACK; cluster goes to $alt (symlink $STACK/pg)"
		mkdir -p "$alt"
		touch "$(dirname "$alt")/$MARKER"
		chmod 755 "$(dirname "$alt")"
		ln -s "$alt" "$STACK/pg"
	fi
}

pg_pid() { pidfile_pid "$PG_DATA/postmaster.pid" postgres; }
pg_alive() { pg_pid >/dev/null; }
pg_port() { echo "$PG_PORT"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -d postgres -U postgres; }
pg_psql() { "$PG_BIN/psql" -X -q -h "$HOST" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }

pg_start() {
	[[ -x $PG_BIN/pg_ctl ]] || die "pg: $PG_BIN/pg_ctl not found (apt-get install postgresql-15)"
	pg_choose_base
	pg_paths
	mkdir -p "$PG_BASE" "$PG_RUN"
	chown postgres: "$PG_BASE" "$PG_RUN"
	if [[ ! -s $PG_DATA/PG_VERSION ]]; then
		rm -rf "$PG_DATA" # a half-done initdb
		log "pg: initdb $PG_DATA"
		runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -A trust --no-sync \
			-U postgres -E UTF8 --locale=C.UTF-8 >"$PG_BASE/initdb.log" 2>&1 ||
			die_with_log "$PG_BASE/initdb.log" "pg: initdb failed"
	fi
	if pg_alive; then
		already_running pg "$PG_PORT" "$(pg_pid)"
	else
		require_port_free pg "$PG_PORT" POLYGATE_PG_PORT
		log "pg: starting on $HOST:$PG_PORT"
		record_port pg "$PG_PORT"
		runuser -u postgres -- bash -c "$CLOSE_FDS"'exec "$@"' pg_ctl "$PG_BIN/pg_ctl" start -w -t "$WAIT_SECS" -D "$PG_DATA" \
			-l "$PG_LOG" -o "-p $PG_PORT -k $PG_RUN -c listen_addresses=$HOST \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
-c max_connections=200" </dev/null >/dev/null 2>&1 ||
			die_with_log "$PG_LOG" "pg: pg_ctl start failed"
	fi
	wait_ready pg "$PG_LOG" pg_alive pg_ready
	if [[ $(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
		log "pg: creating database $PG_DB"
		pg_psql -d postgres -c "CREATE DATABASE $PG_DB"
	fi
}

pg_stop() {
	local pid
	if pid=$(pg_pid); then
		runuser -u postgres -- "$PG_BIN/pg_ctl" stop -w -t 60 -m fast -D "$PG_DATA" \
			</dev/null >/dev/null 2>&1 || die_with_log "$PG_LOG" "pg: pg_ctl stop failed"
		log "pg stopped (pid $pid)"
	fi
}

# ---------------------------------------------------------------- MariaDB ---
#
# Two independent server processes, mysql-a and mysql-b, run as root
# (--user=root) with --no-defaults so that /etc/mysql is ignored.  root has
# an empty password; 'root'@'127.0.0.1' exists and --skip-name-resolve makes
# TCP logins match it.  --no-defaults also drops Debian's utf8mb4 default, so
# the charset is set explicitly.
#   $STACK/mysql-X/data  datadir   mariadbd.pid  mariadbd.sock  mariadbd.log

mysql_dir() { echo "$STACK/$1"; } # NAME -> dir

mysql_port() {
	case $1 in
	mysql-a) echo "$MYSQL_A_PORT" ;;
	mysql-b) echo "$MYSQL_B_PORT" ;;
	esac
}

mysql_pid() { pidfile_pid "$(mysql_dir "$1")/mariadbd.pid" mariadbd; }
mysql_alive() { mysql_pid "$1" >/dev/null; }

mysql_ping() {
	mariadb-admin --no-defaults -h "$HOST" -P "$(mysql_port "$1")" -u root \
		--connect-timeout=2 ping
}

mysql_sql() { # NAME SQL
	mariadb --no-defaults -h "$HOST" -P "$(mysql_port "$1")" -u root -e "$2"
}

mysql_start() { # NAME
	local name=$1 dir port
	dir=$(mysql_dir "$name")
	port=$(mysql_port "$name")
	mkdir -p "$dir"
	if [[ ! -e $dir/data/$MARKER ]]; then
		rm -rf "$dir/data" # a half-done install
		log "$name: mariadb-install-db $dir/data"
		mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
			--skip-test-db --auth-root-authentication-method=normal \
			>"$dir/install.log" 2>&1 </dev/null ||
			die_with_log "$dir/install.log" "$name: mariadb-install-db failed"
		touch "$dir/data/$MARKER"
	fi
	if mysql_pid "$name" >/dev/null; then
		already_running "$name" "$port" "$(mysql_pid "$name")"
	else
		require_port_free "$name" "$port" "POLYGATE_${name^^}_PORT"
		log "$name: starting on $HOST:$port"
		record_port "$name" "$port"
		# mariadbd also writes its own pid (the same pid) to --pid-file.
		spawn "$dir/mariadbd.pid" "$dir/mariadbd.log" \
			mariadbd --no-defaults --datadir="$dir/data" --port="$port" \
			--bind-address="$HOST" --socket="$dir/mariadbd.sock" \
			--pid-file="$dir/mariadbd.pid" --user=root --log-error="$dir/mariadbd.log" \
			--skip-log-bin --skip-name-resolve \
			--character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
			--innodb-buffer-pool-size=64M --innodb-log-file-size=32M \
			--innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=0
	fi
	wait_ready "$name" "$dir/mariadbd.log" "mysql_alive $name" mysql_ping "$name"
	local db dbs
	if [[ $name == mysql-a ]]; then dbs=("${MYSQL_A_DBS[@]}"); else dbs=("${MYSQL_B_DBS[@]}"); fi
	for db in "${dbs[@]}"; do
		mysql_sql "$name" "CREATE DATABASE IF NOT EXISTS \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci" ||
			die "$name: could not create database $db"
	done
}

mysql_stop() { # NAME
	stop_pidfile "$1" "$(mysql_dir "$1")/mariadbd.pid" mariadbd
}

# ------------------------------------------------------------------ Redis ---
#   $STACK/redis/  redis.pid  redis.log  (--dir, nothing is saved)

REDIS_DIR=$STACK/redis
redis_pid() { pidfile_pid "$REDIS_DIR/redis.pid" redis-server; }
redis_alive() { redis_pid >/dev/null; }
redis_ready() { [[ $(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

redis_start() {
	mkdir -p "$REDIS_DIR"
	if redis_alive; then
		already_running redis "$REDIS_PORT" "$(redis_pid)"
	else
		require_port_free redis "$REDIS_PORT" POLYGATE_REDIS_PORT
		log "redis: starting on $HOST:$REDIS_PORT"
		record_port redis "$REDIS_PORT"
		rm -f "$REDIS_DIR/redis.pid"
		# --daemonize: redis forks, calls setsid and writes the pid file itself.
		# shellcheck disable=SC2094 # redis.log: both --logfile and early stderr
		nofds redis-server --port "$REDIS_PORT" --bind "$HOST" --save "" --appendonly no \
			--daemonize yes --pidfile "$REDIS_DIR/redis.pid" \
			--logfile "$REDIS_DIR/redis.log" --dir "$REDIS_DIR" \
			</dev/null >>"$REDIS_DIR/redis.log" 2>&1 ||
			die_with_log "$REDIS_DIR/redis.log" "redis: redis-server failed"
		local i
		for i in $(seq 100); do
			[[ -s $REDIS_DIR/redis.pid ]] && break
			sleep 0.05
		done
	fi
	wait_ready redis "$REDIS_DIR/redis.log" redis_alive redis_ready
}

redis_stop() { stop_pidfile redis "$REDIS_DIR/redis.pid" redis-server; }

# --------------------------------------------------------------- FerretDB ---
#
# FerretDB v1 (MongoDB wire protocol) on its SQLite backend, telemetry off,
# debug HTTP listener off (--debug-addr=-; its default is 127.0.0.1:8088).
#   $STACK/ferretdb/  data/ (SQLite files)  state/  ferretdb.pid  ferretdb.log
#
# Installed to $FERRETDB_BIN once, outside the repo.  `go install ...@v1.24.0`
# fails here (the module proxy answers 403 to the deprecation lookup), so the
# module is fetched with `go mod download` and built from a writable copy of
# its source.  The copy is needed because the module zip lacks the generated
# build/version/version.txt, without which the binary panics at startup.

FERRETDB_DIR=$STACK/ferretdb
ferretdb_pid() { pidfile_pid "$FERRETDB_DIR/ferretdb.pid" ferretdb; }
ferretdb_alive() { ferretdb_pid >/dev/null; }
ferretdb_ready() {
	port_open "$FERRETDB_PORT" || return 1
	"$PYTHON" - "$FERRETDB_PORT" <<'EOF'
import sys, pymongo
c = pymongo.MongoClient("mongodb://127.0.0.1:%s/" % sys.argv[1],
                        serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
c.admin.command("ping")
EOF
}

ferretdb_installed() {
	local out
	[[ -x $FERRETDB_BIN ]] && out=$("$FERRETDB_BIN" --version 2>/dev/null) &&
		[[ $'\n'$out$'\n' == *$'\nversion: '"$FERRETDB_VERSION"$'\n'* ]]
}

ferretdb_install() {
	ferretdb_installed && return 0
	command -v go >/dev/null ||
		die "ferretdb: Go >= 1.22 is needed to build FerretDB (expected /usr/local/go/bin/go)"
	local tmp t0=$SECONDS
	tmp=$(mktemp -d /tmp/polygate-ferretdb-build.XXXXXX)
	log "ferretdb: building $FERRETDB_VERSION into $FERRETDB_BIN (a few minutes on a cold Go cache; log $tmp/build.log)"
	local dir
	(
		cd "$tmp"
		go mod init polygate.local/ferretdb-fetch >/dev/null 2>&1
		go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION"
	) >"$tmp/download.json" 2>"$tmp/build.log" ||
		die_with_log "$tmp/build.log" "ferretdb: go mod download failed"
	dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$tmp/download.json")
	[[ -n $dir && -f $dir/go.mod ]] || die_with_log "$tmp/download.json" "ferretdb: no module Dir in go mod download output"
	cp -r "$dir" "$tmp/src"
	chmod -R u+w "$tmp/src"
	echo "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
	echo "polygate-stack" >"$tmp/src/build/version/package.txt"
	(cd "$tmp/src" && go build -trimpath -buildvcs=false -o "$tmp/ferretdb" ./cmd/ferretdb) \
		>>"$tmp/build.log" 2>&1 || die_with_log "$tmp/build.log" "ferretdb: go build failed"
	"$tmp/ferretdb" --version >/dev/null 2>>"$tmp/build.log" ||
		die_with_log "$tmp/build.log" "ferretdb: the built binary does not run"
	install -D -m 0755 "$tmp/ferretdb" "$FERRETDB_BIN"
	rm -rf "$tmp"
	ferretdb_installed || die "ferretdb: $FERRETDB_BIN --version does not report $FERRETDB_VERSION"
	log "ferretdb: built in $((SECONDS - t0))s"
}

ferretdb_start() {
	ferretdb_installed || die "ferretdb: $FERRETDB_BIN ($FERRETDB_VERSION) missing; run: scripts/stack.sh up"
	mkdir -p "$FERRETDB_DIR/data" "$FERRETDB_DIR/state"
	if ferretdb_alive; then
		already_running ferretdb "$FERRETDB_PORT" "$(ferretdb_pid)"
	else
		require_port_free ferretdb "$FERRETDB_PORT" POLYGATE_FERRETDB_PORT
		log "ferretdb: starting on $HOST:$FERRETDB_PORT"
		record_port ferretdb "$FERRETDB_PORT"
		spawn "$FERRETDB_DIR/ferretdb.pid" "$FERRETDB_DIR/ferretdb.log" \
			"$FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$FERRETDB_DIR/data/" \
			--listen-addr="$HOST:$FERRETDB_PORT" --state-dir="$FERRETDB_DIR/state" \
			--telemetry=disable --debug-addr=- --log-format=text
	fi
	wait_ready ferretdb "$FERRETDB_DIR/ferretdb.log" ferretdb_alive ferretdb_ready
}

ferretdb_stop() { stop_pidfile ferretdb "$FERRETDB_DIR/ferretdb.pid" ferretdb; }

# -------------------------------------------------------------- Toxiproxy ---
#
# Toxiproxy's server: a TCP proxy whose proxies and faults ("toxics": latency,
# reset_peer, timeout, …) are created through its HTTP API on
# $HOST:$TOXIPROXY_PORT.  It starts with no proxies; each test run creates its
# own (named after its port base) and removes them again.
#   $STACK/toxiproxy/  toxiproxy.pid  toxiproxy.log
#
# Installed to $TOXIPROXY_BIN once, outside the repo, with `go install` from
# the Go module proxy (the module's main package is cmd/server; the version
# string is set at link time so that an installed binary can be checked).
# /proc/PID/stat cuts a command name to 15 characters: toxiproxy-serve.

TOXIPROXY_DIR=$STACK/toxiproxy
TOXIPROXY_COMM=toxiproxy-serve
toxiproxy_pid() { pidfile_pid "$TOXIPROXY_DIR/toxiproxy.pid" "$TOXIPROXY_COMM"; }
toxiproxy_alive() { toxiproxy_pid >/dev/null; }
toxiproxy_ready() { curl -sf -o /dev/null --max-time 2 "http://$HOST:$TOXIPROXY_PORT/version"; }

toxiproxy_installed() {
	[[ -x $TOXIPROXY_BIN ]] &&
		[[ $("$TOXIPROXY_BIN" -version 2>/dev/null) == *" version $TOXIPROXY_VERSION" ]]
}

toxiproxy_install() {
	toxiproxy_installed && return 0
	command -v go >/dev/null ||
		die "toxiproxy: Go is needed to build Toxiproxy (expected /usr/local/go/bin/go)"
	local tmp t0=$SECONDS
	tmp=$(mktemp -d /tmp/polygate-toxiproxy-build.XXXXXX)
	log "toxiproxy: building $TOXIPROXY_VERSION into $TOXIPROXY_BIN (log $tmp/build.log)"
	(cd "$tmp" && GOBIN="$tmp/bin" GOFLAGS=-mod=mod go install -trimpath \
		-ldflags "-X $TOXIPROXY_MODULE.Version=$TOXIPROXY_VERSION" \
		"$TOXIPROXY_MODULE/cmd/server@$TOXIPROXY_VERSION") >"$tmp/build.log" 2>&1 ||
		die_with_log "$tmp/build.log" "toxiproxy: go install failed"
	install -D -m 0755 "$tmp/bin/server" "$TOXIPROXY_BIN"
	rm -rf "$tmp"
	toxiproxy_installed || die "toxiproxy: $TOXIPROXY_BIN -version does not report $TOXIPROXY_VERSION"
	log "toxiproxy: built in $((SECONDS - t0))s"
}

toxiproxy_start() {
	toxiproxy_install
	mkdir -p "$TOXIPROXY_DIR"
	if toxiproxy_alive; then
		already_running toxiproxy "$TOXIPROXY_PORT" "$(toxiproxy_pid)"
	else
		require_port_free toxiproxy "$TOXIPROXY_PORT" POLYGATE_TOXIPROXY_PORT
		log "toxiproxy: starting on $HOST:$TOXIPROXY_PORT"
		record_port toxiproxy "$TOXIPROXY_PORT"
		spawn "$TOXIPROXY_DIR/toxiproxy.pid" "$TOXIPROXY_DIR/toxiproxy.log" \
			"$TOXIPROXY_BIN" -host "$HOST" -port "$TOXIPROXY_PORT"
	fi
	wait_ready toxiproxy "$TOXIPROXY_DIR/toxiproxy.log" toxiproxy_alive toxiproxy_ready
}

toxiproxy_stop() { stop_pidfile toxiproxy "$TOXIPROXY_DIR/toxiproxy.pid" "$TOXIPROXY_COMM"; }

# ------------------------------------------------------------------- etcd ---
#
# One etcd member (Debian's etcd-server, 3.4) for the gateways' control store:
# shard maps and instance registrations under a key prefix (docs/fleet.md).
# The v3 HTTP/JSON gateway answers on the client port; the tests use a key
# prefix of their own per run, so runs side by side do not collide.
#   $STACK/etcd/  data/  etcd.pid  etcd.log

ETCD_DIR=$STACK/etcd
ETCD_BIN=${POLYGATE_ETCD_BIN:-/usr/bin/etcd}
etcd_pid() { pidfile_pid "$ETCD_DIR/etcd.pid" etcd; }
etcd_alive() { etcd_pid >/dev/null; }
etcd_ready() { curl -sf -o /dev/null --max-time 2 "http://$HOST:$ETCD_PORT/health"; }

etcd_start() {
	[[ -x $ETCD_BIN ]] || die "etcd: $ETCD_BIN not found (apt-get install etcd-server etcd-client)"
	mkdir -p "$ETCD_DIR/data"
	chmod 700 "$ETCD_DIR/data"
	if etcd_alive; then
		already_running etcd "$ETCD_PORT" "$(etcd_pid)"
	else
		require_port_free etcd "$ETCD_PORT" POLYGATE_ETCD_PORT
		require_port_free etcd "$ETCD_PEER_PORT" POLYGATE_ETCD_PEER_PORT
		log "etcd: starting on $HOST:$ETCD_PORT (peer $ETCD_PEER_PORT)"
		record_port etcd "$ETCD_PORT"
		spawn "$ETCD_DIR/etcd.pid" "$ETCD_DIR/etcd.log" \
			"$ETCD_BIN" --name polygate-stack --data-dir "$ETCD_DIR/data" \
			--listen-client-urls "http://$HOST:$ETCD_PORT" \
			--advertise-client-urls "http://$HOST:$ETCD_PORT" \
			--listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
			--initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
			--initial-cluster "polygate-stack=http://$HOST:$ETCD_PEER_PORT" \
			--initial-cluster-state new --auto-compaction-retention 1h
	fi
	wait_ready etcd "$ETCD_DIR/etcd.log" etcd_alive etcd_ready
}

etcd_stop() { stop_pidfile etcd "$ETCD_DIR/etcd.pid" etcd; }

# --------------------------------------------------------------- dispatch ---

check_name() {
	local s
	for s in "${SERVERS[@]}"; do [[ $1 == "$s" ]] && return 0; done
	die "unknown server '$1' (one of: ${SERVERS[*]})"
}

server_start() {
	case $1 in
	pg) pg_start ;;
	mysql-a | mysql-b) mysql_start "$1" ;;
	redis) redis_start ;;
	ferretdb) ferretdb_start ;;
	toxiproxy) toxiproxy_start ;;
	etcd) etcd_start ;;
	esac
}

server_stop() {
	case $1 in
	pg) pg_stop ;;
	mysql-a | mysql-b) mysql_stop "$1" ;;
	redis) redis_stop ;;
	ferretdb) ferretdb_stop ;;
	toxiproxy) toxiproxy_stop ;;
	etcd) etcd_stop ;;
	esac
}

server_pid() {
	case $1 in
	pg) pg_pid ;;
	mysql-a | mysql-b) mysql_pid "$1" ;;
	redis) redis_pid ;;
	ferretdb) ferretdb_pid ;;
	toxiproxy) toxiproxy_pid ;;
	etcd) etcd_pid ;;
	esac
}

server_port() {
	case $1 in
	pg) echo "$PG_PORT" ;;
	mysql-a | mysql-b) mysql_port "$1" ;;
	redis) echo "$REDIS_PORT" ;;
	ferretdb) echo "$FERRETDB_PORT" ;;
	toxiproxy) echo "$TOXIPROXY_PORT" ;;
	etcd) echo "$ETCD_PORT" ;;
	esac
}

# "up" = our process is alive and its port accepts TCP connections.
cmd_status() {
	local s pid state rc=0
	for s in "${SERVERS[@]}"; do
		state=down
		if pid=$(server_pid "$s"); then
			port_open "$(server_port "$s")" && state=up
		else
			pid=-
		fi
		[[ $state == up ]] || rc=1
		printf '%-9s  %-5s  %-4s  %s\n' "$s" "$(server_port "$s")" "$state" "$pid"
	done
	return $rc
}

cmd_up() {
	local t0=$SECONDS
	if [[ ${POLYGATE_SKIP_DEPS:-0} != 1 ]]; then
		"$ROOT/scripts/ci-deps.sh" 9>&-
	fi
	ferretdb_install
	toxiproxy_install
	local s
	for s in "${SERVERS[@]}"; do server_start "$s"; done
	log "up in $((SECONDS - t0))s"
	cmd_status
}

cmd_down() {
	local i
	for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do server_stop "${SERVERS[i]}"; done
}

cmd_reset() {
	cmd_down
	if [[ -L $STACK/pg ]]; then
		local alt_root
		alt_root=$(dirname "$(readlink -m "$STACK/pg")")
		if [[ -e $alt_root/$MARKER ]]; then rm -rf "$alt_root"; fi
	fi
	[[ -e $STACK/$MARKER ]] || die "$STACK was not created by stack.sh; not deleting it"
	rm -rf "$STACK"
	log "removed $STACK"
}

usage() {
	sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[[ $(id -u) -eq 0 ]] || die "run as root (servers are started as root, PostgreSQL as user postgres)"
pg_paths

case ${1:-} in
up)
	take_lock
	cmd_up
	;;
down)
	take_lock
	cmd_down
	;;
status) cmd_status ;;
reset)
	take_lock
	cmd_reset
	;;
start | stop | restart)
	[[ $# -eq 2 ]] || usage
	check_name "$2"
	take_lock
	case $1 in
	start) server_start "$2" ;;
	stop) server_stop "$2" ;;
	restart)
		server_stop "$2"
		server_start "$2"
		;;
	esac
	cmd_status || true # another server may be down; that is not an error here
	;;
*) usage ;;
esac
