#!/usr/bin/env bash
# Install the Debian 12 packages polygate needs: the build and test
# dependencies and the database servers of the local stack (scripts/stack.sh).
#
#   scripts/ci-deps.sh               install whatever is missing (root or sudo)
#   scripts/ci-deps.sh --build-only  only the build/test packages, no servers
#   scripts/ci-deps.sh --check       list missing packages; exit 1 if any
#
# Fast when everything is present (one dpkg-query, no apt-get update), so
# `stack.sh up` and CI can call it every time.  The apt servers do not start on
# install here (policy-rc.d); stack.sh runs its own instances on other ports.
set -euo pipefail

BUILD_PKGS=(
	build-essential pkg-config
	libevent-dev libpq-dev libmariadb-dev libmongoc-dev libbson-dev
	libhiredis-dev libyaml-dev libjson-c-dev libhttp-parser-dev libxxhash-dev libssl-dev
	libcmocka-dev
	python3-pytest python3-redis python3-psycopg2 python3-pymysql python3-pymongo
	curl valgrind clang libclang-rt-14-dev clang-format gnuplot-nox
)
SERVER_PKGS=(
	postgresql-15 mariadb-server mariadb-client redis-server redis-tools etcd-server etcd-client
)

check_only=0
pkgs=("${BUILD_PKGS[@]}" "${SERVER_PKGS[@]}")
for arg in "$@"; do
	case "$arg" in
	--check) check_only=1 ;;
	--build-only) pkgs=("${BUILD_PKGS[@]}") ;;
	-h | --help)
		sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "ci-deps.sh: unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

# Packages not in state "ii" (installed, ok). dpkg-query prints nothing for a
# package it has never heard of, so compare against the full list.
missing_pkgs() {
	local installed
	installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${pkgs[@]}" 2>/dev/null |
		awk '$1 == "ii" { print $2 }' | sed 's/:.*//') || true
	local p
	for p in "${pkgs[@]}"; do
		grep -qxF "$p" <<<"$installed" || echo "$p"
	done
}

mapfile -t missing < <(missing_pkgs)

if ((check_only)); then
	if ((${#missing[@]})); then
		printf '%s\n' "${missing[@]}"
		exit 1
	fi
	exit 0
fi

((${#missing[@]})) || exit 0

echo "ci-deps: installing: ${missing[*]}" >&2
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null || {
		echo "ci-deps: not root and no sudo; install: ${missing[*]}" >&2
		exit 1
	}
	SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	--no-install-recommends "${missing[@]}"

mapfile -t missing < <(missing_pkgs)
if ((${#missing[@]})); then
	echo "ci-deps: still missing after install: ${missing[*]}" >&2
	exit 1
fi
