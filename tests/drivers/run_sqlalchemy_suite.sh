#!/usr/bin/env bash
# SQLAlchemy's own test suite (from its sdist; a PostgreSQL-relevant subset) run directly
# against PostgreSQL and through `tandem proxy` in session and transaction mode, with the
# psycopg2 driver (or psycopg 3 or asyncpg); prints the tests whose outcome differs from the direct run. Not
# part of CI (minutes long, needs PyPI and libpq-dev to build psycopg2); see
# tests/drivers/README.md.
#
# Usage: tests/drivers/run_sqlalchemy_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs; PYTEST_ARGS replace the default test subset when they name
#   paths, e.g. `-- test/sql/test_query.py -k limit`). Environment:
#   SQLALCHEMY_VERSION  sdist version (default 2.0.36)
#   SQLALCHEMY_DRIVER   psycopg2 (default), psycopg (3, server-side binding and automatic
#                       prepared statements) or asyncpg
#   SQLALCHEMY_TESTS    the test subset (default below)
#   SUITE_CACHE, TANDEM_BIN, PG_BIN, TANDEM_LOG: see suite_lib.sh
#   TEST_TIMEOUT        seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

. "$(dirname "$0")/suite_lib.sh"
version="${SQLALCHEMY_VERSION:-2.0.36}"
driver="${SQLALCHEMY_DRIVER:-psycopg2}"
test_timeout="${TEST_TIMEOUT:-60}"
# The whole suite takes far too long through a debug proxy; this subset (the PostgreSQL
# dialect's tests and the generic tests that exercise the driver most) takes 3 to 5 minutes
# a run.
default_tests="test/dialect/postgresql test/sql/test_types.py test/sql/test_query.py
    test/sql/test_resultset.py test/sql/test_returning.py test/sql/test_insert_exec.py
    test/sql/test_sequences.py test/engine/test_transaction.py test/engine/test_reconnect.py
    test/engine/test_execute.py"
read -r -d '' -a tests <<<"${SQLALCHEMY_TESTS:-$default_tests}" || true
case "$driver" in
    psycopg2|psycopg|asyncpg) ;;
    *) echo "SQLALCHEMY_DRIVER must be psycopg2, psycopg or asyncpg" >&2; exit 2 ;;
esac

suite_init "$@"
for arg in ${extra_args[@]+"${extra_args[@]}"}; do
    [[ $arg == test/* ]] && tests=() && break
done

venv="$cache/venv-sqlalchemy-$version"
if [[ ! -x "$venv/bin/pytest" ]] || ! compgen -G "$venv/lib/python3*/site-packages/psycopg" >/dev/null; then
    # SQLAlchemy itself is not installed: test/conftest.py puts the sdist's lib/ (pure Python,
    # no C extensions) first on sys.path. psycopg2 is built against the system libpq; psycopg
    # 3 is its pure-Python flavour, which loads the system libpq.
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-binary psycopg2 psycopg2==2.9.10 asyncpg==0.32.0 psycopg==3.2.3 \
        "pytest>=7.0.0,<8.2" pytest-timeout greenlet typing_extensions
fi
src="$cache/sqlalchemy-$version"
if [[ ! -d "$src/test" ]]; then
    unpack_sdist "$venv/bin/pip" sqlalchemy "$version"
fi
work="$cache/run-sqlalchemy-$version"
rm -rf "$work" && mkdir -p "$work"
cp -r "$src/lib" "$src/test" "$src/setup.cfg" "$src/pyproject.toml" "$work/"

ensure_tandem

name="sqlalchemy"
[[ $driver == psycopg2 ]] || name="sqlalchemy-$driver"
for mode in "${modes[@]}"; do
    # max_prepared_transactions enables the two-phase commit tests.
    init_cluster -E UTF8
    start_cluster "$(free_port)" "-c max_prepared_transactions=10"
    # The suite's database as README.unittests.rst sets it up: `test` (UTF8, English full-text
    # search), the schemas `test_schema` and `test_schema_2`, hstore and citext (no postgis).
    admin_sql postgres -c "CREATE DATABASE test ENCODING 'utf8' TEMPLATE template0" \
        -c "ALTER DATABASE test SET default_text_search_config = 'pg_catalog.english'"
    admin_sql test -c "CREATE SCHEMA test_schema" -c "CREATE SCHEMA test_schema_2" \
        -c "CREATE EXTENSION IF NOT EXISTS hstore" -c "CREATE EXTENSION IF NOT EXISTS citext"
    connect_port "$mode" "$cache/proxy-$name-$mode.log"
    echo "== $mode: SQLAlchemy $version suite ($driver) on port $port"
    # One process, in file order (no xdist, no pytest-randomly); pyproject.toml's addopts
    # without -v and --maxfail. The URL has a password (ignored: trust) because
    # test_multiple_host_real_connect substitutes it into URLs of its own.
    (cd "$work" && timeout 2700 "$venv/bin/python" -m pytest -p no:cacheprovider -p no:randomly \
        -o addopts="--tb=short -r N -p warnings -p logging --strict-markers" \
        --timeout="$test_timeout" --dburi "postgresql+$driver://postgres:postgres@127.0.0.1:$port/test" \
        --junitxml="$cache/$name-$mode.xml" -q ${tests[@]+"${tests[@]}"} \
        ${extra_args[@]+"${extra_args[@]}"} >"$cache/$name-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/$name-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/$name-{direct,session,transaction}.xml
