#!/bin/sh
# polygate built with ThreadSanitizer, for `make tsan-integration`: the first
# data race (or other TSan report) stops the gateway with exit code 66 (the
# integration fixtures assert a clean exit), and the report goes to
# build/tsan/polygate.<pid>.  `make tsan-integration` fails when any report
# file is not empty, so a race in a gateway a test does not stop cleanly is
# not missed either.  Suppressions, each with its reason: scripts/tsan.supp.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$ROOT/build/tsan"
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 history_size=4 \
log_path=$ROOT/build/tsan/polygate suppressions=$ROOT/scripts/tsan.supp ${TSAN_OPTIONS:-}" \
    exec "$ROOT/build/san-thread/polygate" "$@"
