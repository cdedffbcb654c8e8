#!/usr/bin/env bash
# Run the integration tests against the local stack (scripts/stack.sh up
# must have run) and a polygate binary ($POLYGATE_BIN, default ./polygate).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export POLYGATE_BIN=${POLYGATE_BIN:-$ROOT/polygate}
cd "$ROOT/tests/integration"
# Debian's python3 has pytest and the database clients (python3-pytest,
# python3-redis, …); another python3 earlier in PATH may not.
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "$@"
