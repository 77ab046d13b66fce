#!/usr/bin/env bash
# psycopg2's own test suite (from its sdist) run directly against PostgreSQL and through
# `tandem proxy` in session and transaction mode; prints the tests whose outcome differs from
# the direct run. Not part of CI (minutes long, needs PyPI and libpq-dev to build psycopg2);
# see tests/drivers/README.md.
#
# Usage: tests/drivers/run_psycopg2_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs). Environment:
#   PSYCOPG2_VERSION  sdist version (default 2.9.10)
#   SUITE_CACHE       venv, sdist and logs (default /var/tmp/tandem-suites)
#   TANDEM_BIN        the tandem binary (default: $CARGO_TARGET_DIR or target/, debug build)
#   PG_BIN            PostgreSQL server programs (default: pg_config --bindir)
#   TEST_TIMEOUT      seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
version="${PSYCOPG2_VERSION:-2.9.10}"
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
venv="$cache/venv-psycopg2-$version"
if [[ ! -x "$venv/bin/pytest" ]]; then
    # Built from the sdist against the system libpq (needs libpq-dev and a C compiler).
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-binary psycopg2 "psycopg2==$version" pytest pytest-timeout
fi
src="$cache/psycopg2-$version"
if [[ ! -d "$src/tests" ]]; then
    "$venv/bin/pip" download -q --no-binary :all: --no-deps "psycopg2==$version" -d "$cache"
    tar -xzf "$cache/psycopg2-$version.tar.gz" -C "$cache"
fi
# The tests import the installed (compiled) psycopg2; the sdist's sources live in lib/, which
# is left behind.
work="$cache/run-psycopg2-$version"
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
    # A fresh cluster per run: the suite leaves tables, prepared transactions and large
    # objects behind when it fails. max_prepared_transactions enables the two-phase commit
    # tests (they skip without it).
    data="$(mktemp -d "$cache/pgdata.XXXXXX")"
    [[ $(id -u) == 0 ]] && chown postgres "$data"
    as_postgres "$pg_bin/initdb" -D "$data" -U postgres -A trust >/dev/null
    pg_port=$(free_port)
    as_postgres "$pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
        -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c jit=off -c max_connections=300 -c max_prepared_transactions=10" >/dev/null
    # The suite's database (testconfig.py's default name), with the extensions some tests use.
    as_postgres "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c "CREATE DATABASE psycopg2_test" >/dev/null
    as_postgres "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d psycopg2_test \
        -c "CREATE EXTENSION IF NOT EXISTS hstore" >/dev/null 2>&1 || true
    port=$pg_port
    if [[ $mode != direct ]]; then
        port=$(free_port)
        "$tandem" proxy --listen "127.0.0.1:$port" --primary "127.0.0.1:$pg_port" --pool-mode "$mode" \
            --auth trust --control-user postgres --pool-size 100 --log "${TANDEM_LOG:-warn}" \
            >"$cache/proxy-psycopg2-$mode.log" 2>&1 &
        proxy_pid=$!
        for _ in $(seq 50); do
            "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
            sleep 0.2
        done
    fi
    echo "== $mode: psycopg2 $version suite on port $port"
    # The modules' `test_suite()` helpers are not tests: python_functions matches nothing, the
    # unittest.TestCase classes are collected all the same.
    (cd "$work" && PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 \
        PSYCOPG2_TESTDB_PORT=$port PSYCOPG2_TESTDB_USER=postgres \
        timeout 1800 "$venv/bin/python" -m pytest -p no:cacheprovider -q -rN \
        -o addopts="--tb=short" -o python_functions=_no_such_test --timeout="$test_timeout" \
        --junitxml="$cache/psycopg2-$mode.xml" ${pytest_args[@]+"${pytest_args[@]}"} tests \
        >"$cache/psycopg2-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/psycopg2-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/psycopg2-{direct,session,transaction}.xml
