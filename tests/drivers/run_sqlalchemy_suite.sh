#!/usr/bin/env bash
# SQLAlchemy's own test suite (from its sdist; a PostgreSQL-relevant subset) run directly
# against PostgreSQL and through `tandem proxy` in session and transaction mode, with the
# psycopg2 driver (or asyncpg); prints the tests whose outcome differs from the direct run. Not
# part of CI (minutes long, needs PyPI and libpq-dev to build psycopg2); see
# tests/drivers/README.md.
#
# Usage: tests/drivers/run_sqlalchemy_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs; PYTEST_ARGS replace the default test subset when they name
#   paths, e.g. `-- test/sql/test_query.py -k limit`). Environment:
#   SQLALCHEMY_VERSION  sdist version (default 2.0.36)
#   SQLALCHEMY_DRIVER   psycopg2 (default) or asyncpg
#   SQLALCHEMY_TESTS    the test subset (default below)
#   SUITE_CACHE         venv, sdist and logs (default /var/tmp/tandem-suites)
#   TANDEM_BIN          the tandem binary (default: $CARGO_TARGET_DIR or target/, debug build)
#   PG_BIN              PostgreSQL server programs (default: pg_config --bindir)
#   TEST_TIMEOUT        seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
version="${SQLALCHEMY_VERSION:-2.0.36}"
driver="${SQLALCHEMY_DRIVER:-psycopg2}"
cache="${SUITE_CACHE:-/var/tmp/tandem-suites}"
test_timeout="${TEST_TIMEOUT:-60}"
pg_bin="${PG_BIN:-$(pg_config --bindir 2>/dev/null || true)}"
if [[ ! -x "$pg_bin/initdb" ]]; then
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
fi
tandem="${TANDEM_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tandem}"
# The whole suite takes far too long through a debug proxy; this subset (the PostgreSQL
# dialect's tests and the generic tests that exercise the driver most) takes 3 to 5 minutes
# a run.
default_tests="test/dialect/postgresql test/sql/test_types.py test/sql/test_query.py
    test/sql/test_resultset.py test/sql/test_returning.py test/sql/test_insert_exec.py
    test/sql/test_sequences.py test/engine/test_transaction.py test/engine/test_reconnect.py
    test/engine/test_execute.py"
read -r -d '' -a tests <<<"${SQLALCHEMY_TESTS:-$default_tests}" || true
case "$driver" in
    psycopg2|asyncpg) ;;
    *) echo "SQLALCHEMY_DRIVER must be psycopg2 or asyncpg" >&2; exit 2 ;;
esac

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
for arg in ${pytest_args[@]+"${pytest_args[@]}"}; do
    [[ $arg == test/* ]] && tests=() && break
done

mkdir -p "$cache"
venv="$cache/venv-sqlalchemy-$version"
if [[ ! -x "$venv/bin/pytest" ]]; then
    # SQLAlchemy itself is not installed: test/conftest.py puts the sdist's lib/ (pure Python,
    # no C extensions) first on sys.path. psycopg2 is built against the system libpq.
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-binary psycopg2 psycopg2==2.9.10 asyncpg==0.32.0 \
        "pytest>=7.0.0,<8.2" pytest-timeout greenlet typing_extensions
fi
src="$cache/sqlalchemy-$version"
if [[ ! -d "$src/test" ]]; then
    "$venv/bin/pip" download -q --no-binary :all: --no-deps "sqlalchemy==$version" -d "$cache"
    tar -xzf "$cache/sqlalchemy-$version.tar.gz" -C "$cache"
fi
work="$cache/run-sqlalchemy-$version"
rm -rf "$work" && mkdir -p "$work"
cp -r "$src/lib" "$src/test" "$src/setup.cfg" "$src/pyproject.toml" "$work/"

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

name="sqlalchemy"
[[ $driver == psycopg2 ]] || name="sqlalchemy-$driver"
for mode in "${modes[@]}"; do
    # A fresh cluster per run: the suite leaves tables, types and prepared transactions behind
    # when it fails. max_prepared_transactions enables the two-phase commit tests.
    data="$(mktemp -d "$cache/pgdata.XXXXXX")"
    [[ $(id -u) == 0 ]] && chown postgres "$data"
    as_postgres "$pg_bin/initdb" -D "$data" -U postgres -A trust -E UTF8 >/dev/null
    pg_port=$(free_port)
    as_postgres "$pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
        -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c jit=off -c max_connections=300 -c max_prepared_transactions=10" >/dev/null
    # The suite's database as README.unittests.rst sets it up: `test` (UTF8, English full-text
    # search), the schemas `test_schema` and `test_schema_2`, hstore and citext (no postgis).
    as_postgres "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c "CREATE DATABASE test ENCODING 'utf8' TEMPLATE template0" \
        -c "ALTER DATABASE test SET default_text_search_config = 'pg_catalog.english'" >/dev/null
    as_postgres "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d test \
        -c "CREATE SCHEMA test_schema" -c "CREATE SCHEMA test_schema_2" \
        -c "CREATE EXTENSION IF NOT EXISTS hstore" -c "CREATE EXTENSION IF NOT EXISTS citext" >/dev/null
    port=$pg_port
    if [[ $mode != direct ]]; then
        port=$(free_port)
        "$tandem" proxy --listen "127.0.0.1:$port" --primary "127.0.0.1:$pg_port" --pool-mode "$mode" \
            --auth trust --control-user postgres --pool-size 100 --log "${TANDEM_LOG:-warn}" \
            >"$cache/proxy-$name-$mode.log" 2>&1 &
        proxy_pid=$!
        for _ in $(seq 50); do
            "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
            sleep 0.2
        done
    fi
    echo "== $mode: SQLAlchemy $version suite ($driver) on port $port"
    # One process, in file order (no xdist, no pytest-randomly); pyproject.toml's addopts
    # without -v and --maxfail. The URL has a password (ignored: trust) because
    # test_multiple_host_real_connect substitutes it into URLs of its own.
    (cd "$work" && timeout 2700 "$venv/bin/python" -m pytest -p no:cacheprovider -p no:randomly \
        -o addopts="--tb=short -r N -p warnings -p logging --strict-markers" \
        --timeout="$test_timeout" --dburi "postgresql+$driver://postgres:postgres@127.0.0.1:$port/test" \
        --junitxml="$cache/$name-$mode.xml" -q ${tests[@]+"${tests[@]}"} \
        ${pytest_args[@]+"${pytest_args[@]}"} >"$cache/$name-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/$name-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/$name-{direct,session,transaction}.xml
