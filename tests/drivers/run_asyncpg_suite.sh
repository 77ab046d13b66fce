#!/usr/bin/env bash
# asyncpg's own test suite (from its sdist) run directly against PostgreSQL and through
# `tandem proxy` in session and transaction mode; prints the tests whose outcome differs from
# the direct run. Not part of CI (minutes long, needs PyPI); see tests/drivers/README.md.
#
# Usage: tests/drivers/run_asyncpg_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs). Environment:
#   ASYNCPG_VERSION   sdist/wheel version (default 0.32.0)
#   SUITE_CACHE       venv, sdist and logs (default /var/tmp/tandem-suites)
#   TANDEM_BIN        the tandem binary (default: $CARGO_TARGET_DIR or target/, debug build)
#   PG_BIN            PostgreSQL server programs (default: pg_config --bindir)
#   TEST_TIMEOUT      seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
version="${ASYNCPG_VERSION:-0.32.0}"
cache="${SUITE_CACHE:-/var/tmp/tandem-suites}"
test_timeout="${TEST_TIMEOUT:-60}"
pg_bin="${PG_BIN:-$(pg_config --bindir 2>/dev/null || true)}"
if [[ ! -x "$pg_bin/initdb" ]]; then
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
fi
tandem="${TANDEM_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tandem}"

modes=()
pytest_args=()
while (($#)); do
    case "$1" in
        --) shift; pytest_args=("$@"); break ;;
        direct|session|transaction) modes+=("$1") ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
((${#modes[@]})) || modes=(direct session transaction)

mkdir -p "$cache"
venv="$cache/venv-asyncpg-$version"
if [[ ! -x "$venv/bin/pytest" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "asyncpg==$version" pytest pytest-timeout distro uvloop
fi
src="$cache/asyncpg-$version"
if [[ ! -d "$src/tests" ]]; then
    "$venv/bin/pip" download -q --no-binary :all: --no-deps "asyncpg==$version" -d "$cache"
    tar -xzf "$cache/asyncpg-$version.tar.gz" -C "$cache"
fi
# The tests import the installed (compiled) asyncpg, not the sdist's uncompiled sources.
work="$cache/run-asyncpg-$version"
rm -rf "$work" && mkdir -p "$work" && cp -r "$src/tests" "$work/tests"

if [[ " ${modes[*]} " != " direct " && ! -x "$tandem" ]]; then
    (cd "$repo" && cargo build -p tandem)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

data="" proxy_pid=""
cleanup() {
    if [[ -n "$proxy_pid" ]]; then
        # SIGTERM first; a proxy still waiting for a stuck transaction to finish gets SIGKILL.
        kill "$proxy_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
    fi
    proxy_pid=""
    if [[ -n "$data" && -d "$data" ]]; then
        as_postgres "$pg_bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$data"
    fi
    data=""
}
trap cleanup EXIT

for mode in "${modes[@]}"; do
    # A fresh cluster per run: the suite leaves tables and databases behind when it fails.
    data="$(mktemp -d "$cache/pgdata.XXXXXX")"
    [[ $(id -u) == 0 ]] && chown postgres "$data"
    as_postgres "$pg_bin/initdb" -D "$data" -U postgres -A trust >/dev/null
    pg_port=$(free_port)
    as_postgres "$pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
        -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c jit=off -c max_connections=300" >/dev/null
    port=$pg_port
    if [[ $mode != direct ]]; then
        port=$(free_port)
        "$tandem" proxy --listen "127.0.0.1:$port" --primary "127.0.0.1:$pg_port" --pool-mode "$mode" \
            --auth trust --control-user postgres --pool-size 100 --log "${TANDEM_LOG:-warn}" \
            >"$cache/proxy-$mode.log" 2>&1 &
        proxy_pid=$!
        for _ in $(seq 50); do
            pg_isready -q -h 127.0.0.1 -p "$port" && break
            sleep 0.2
        done
    fi
    echo "== $mode: asyncpg $version suite on port $port"
    (cd "$work" && PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres \
        timeout 1800 "$venv/bin/python" -m pytest -p no:cacheprovider -q -rN \
        -o addopts="--tb=short --import-mode=importlib" --timeout="$test_timeout" \
        --junitxml="$cache/asyncpg-$mode.xml" ${pytest_args[@]+"${pytest_args[@]}"} tests \
        >"$cache/asyncpg-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/asyncpg-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/asyncpg-{direct,session,transaction}.xml
