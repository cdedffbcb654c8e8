#!/usr/bin/env bash
# check-layers.sh — the include rule and include circles (docs/design.md,
# "Map of the house").  `make` runs it before it builds anything.
#
# Layers, one way down:  gateway/ → rebalance/ → adapters/ → routing/ →
# model/ → lib/, with config/ beside them.  A file may include (#include "…") only:
#
#   lib/       lib/
#   model/     lib/ model/ config/
#   routing/   lib/ model/ config/ routing/
#   config/    lib/ model/ config/ routing/   (the shard map is read at load)
#   adapters/  lib/ model/ config/ routing/ adapters/
#   rebalance/ lib/ model/ config/ routing/ adapters/ rebalance/
#   gateway/   anything of ours
#
# tests/, bench/ and scripts/ sit on top and may include anything.
#
# Circles: a module is a .c/.h pair (gateway/gw_worker.c + .h); module A
# depends on B when A.c or A.h includes B.h.  Every elementary circle among
# modules is printed, and is an error: a circle means neither side can be
# read, built or tested without the other.  Break one with a forward
# declaration, a declaration moved to the header it belongs in, or a small
# table of hooks the higher module fills (gw_worker_hooks).
#
#   scripts/check-layers.sh           the include rule and the circles
#   scripts/check-layers.sh --circles the circles only
#   scripts/check-layers.sh --graph   print the module graph (A -> B lines)
set -euo pipefail
cd "$(dirname "$0")/.."

# "file<TAB>line<TAB>included path" for every quoted include in our code.
includes() {
    local f
    for f in $(git ls-files -co --exclude-standard -- \
        'lib/*.[ch]' 'model/*.[ch]' 'routing/*.[ch]' 'config/*.[ch]' 'adapters/*.[ch]' \
        'rebalance/*.[ch]' 'gateway/*.[ch]' | sort -u); do
        [ -f "$f" ] || continue
        awk -v f="$f" 'match($0, /^[ \t]*#[ \t]*include[ \t]*"[^"]+"/) {
            s = substr($0, RSTART, RLENGTH); sub(/^[^"]*"/, "", s); sub(/"$/, "", s)
            printf "%s\t%d\t%s\n", f, FNR, s }' "$f"
    done
}

if [ "${1:-}" = "--graph" ]; then
    includes | awk -F'\t' '{ a = $1; sub(/\.[ch]$/, "", a); b = $3; sub(/\.[ch]$/, "", b)
        if (a != b) print a " -> " b }' | sort -u
    exit 0
fi

status=0
mode=${1:-}
[ "$mode" = "--circles" ] || includes | awk -F'\t' '
BEGIN {
    allow["lib"] = "lib"
    allow["model"] = "lib model config"
    allow["routing"] = "lib model config routing"
    allow["config"] = "lib model config routing"
    allow["adapters"] = "lib model config routing adapters"
    allow["rebalance"] = "lib model config routing adapters rebalance"
    allow["gateway"] = "lib model config routing adapters rebalance gateway"
}
{
    from = $1; sub(/\/.*/, "", from)
    to = $3; sub(/\/.*/, "", to)
    if ($3 !~ /\//) {
        printf "check-layers: %s:%d includes \"%s\": include our headers by their path from the root (folder/file.h)\n", $1, $2, $3
        bad = 1; next
    }
    if ((" " allow[from] " ") !~ (" " to " ")) {
        l = allow[from]; gsub(/ /, "/, ", l)
        printf "check-layers: %s:%d includes \"%s\": %s/ may include only %s/ (%s/ is above it)\n", \
            $1, $2, $3, from, l, to
        bad = 1
    }
}
END { exit bad }' || status=1

# Circles: every elementary cycle of the module graph, each printed once,
# starting from its smallest module.
includes | awk -F'\t' '
{
    a = $1; sub(/\.[ch]$/, "", a); b = $3; sub(/\.[ch]$/, "", b)
    if (a == b || ((a, b) in edge)) next
    edge[a, b] = 1; n[a]++; succ[a, n[a]] = b; node[a] = 1; node[b] = 1
}
function dfs(start, v, depth,    i, w, k, line) {
    path[depth] = v; onpath[v] = 1
    for (i = 1; i <= n[v]; i++) {
        w = succ[v, i]
        if (w == start) {
            line = path[0]
            for (k = 1; k <= depth; k++) line = line " -> " path[k]
            print "check-layers: include circle: " line " -> " start
            found = 1
        } else if (w > start && !(w in onpath)) {
            dfs(start, w, depth + 1)
        }
    }
    delete onpath[v]
}
END {
    for (s in node) dfs(s, s, 0)
    exit found
}' | sort || status=1

if [ "$status" -ne 0 ]; then
    echo "check-layers: failed (the rule: scripts/check-layers.sh, docs/design.md \"Map of the house\")" >&2
fi
exit "$status"
