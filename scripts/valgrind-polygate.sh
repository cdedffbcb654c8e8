#!/bin/sh
# polygate under valgrind memcheck, for `make valgrind`: any error or definite
# leak makes it exit 99 (the integration fixtures assert a clean exit), and
# the report goes to build/valgrind/<pid>.log.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$ROOT/build/valgrind"
# --max-stackframe: MariaDB Connector/C's non-blocking calls run on their own
# small heap-allocated stacks (my_context, swapcontext).  Memcheck takes an SP
# move shorter than max-stackframe (default 2 MB) for a frame, not a stack
# switch; when such a stack happened to lie within 2 MB of a worker's thread
# stack, it marked live stack as unaddressable and reported hundreds of
# invalid accesses in libmariadb, libevent and pthread (seen in CI, rarely).
# 128 KiB is above any frame of ours or of the libraries, far below 2 MB.
exec valgrind --quiet --max-stackframe=131072 --leak-check=full --errors-for-leak-kinds=definite \
    --error-exitcode=99 --log-file="$ROOT/build/valgrind/%p.log" \
    "$ROOT/build/release/polygate" "$@"
