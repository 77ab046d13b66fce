#!/usr/bin/env bash
# psycopg2's own test suite (from its sdist) run directly against PostgreSQL and through
# `tandem proxy` in session and transaction mode; prints the tests whose outcome differs from
# the direct run. Not part of CI (minutes long, needs PyPI and libpq-dev to build psycopg2);
# see tests/drivers/README.md.
#
# Usage: tests/drivers/run_psycopg2_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs). Environment:
#   PSYCOPG2_VERSION  sdist version (default 2.9.10)
#   SUITE_CACHE, TANDEM_BIN, PG_BIN, TANDEM_LOG: see suite_lib.sh
#   TEST_TIMEOUT      seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

. "$(dirname "$0")/suite_lib.sh"
version="${PSYCOPG2_VERSION:-2.9.10}"
test_timeout="${TEST_TIMEOUT:-60}"
suite_init "$@"

venv="$cache/venv-psycopg2-$version"
if [[ ! -x "$venv/bin/pytest" ]]; then
    # Built from the sdist against the system libpq (needs libpq-dev and a C compiler).
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-binary psycopg2 "psycopg2==$version" pytest pytest-timeout
fi
# The tests import the installed (compiled) psycopg2; the sdist's sources live in lib/, which
# is left behind.
copy_sdist_tests "$venv/bin/pip" psycopg2 "$version" tests

ensure_tandem

for mode in "${modes[@]}"; do
    # max_prepared_transactions enables the two-phase commit tests (they skip without it).
    init_cluster
    start_cluster "$(free_port)" "-c max_prepared_transactions=10"
    # The suite's database (testconfig.py's default name), with the extensions some tests use.
    admin_sql postgres -c "CREATE DATABASE psycopg2_test"
    admin_sql psycopg2_test -c "CREATE EXTENSION IF NOT EXISTS hstore" 2>/dev/null || true
    connect_port "$mode" "$cache/proxy-psycopg2-$mode.log"
    echo "== $mode: psycopg2 $version suite on port $port"
    # The modules' `test_suite()` helpers are not tests: python_functions matches nothing, the
    # unittest.TestCase classes are collected all the same.
    (cd "$work" && PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 \
        PSYCOPG2_TESTDB_PORT=$port PSYCOPG2_TESTDB_USER=postgres \
        timeout 1800 "$venv/bin/python" -m pytest -p no:cacheprovider -q -rN \
        -o addopts="--tb=short" -o python_functions=_no_such_test --timeout="$test_timeout" \
        --junitxml="$cache/psycopg2-$mode.xml" ${extra_args[@]+"${extra_args[@]}"} tests \
        >"$cache/psycopg2-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/psycopg2-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/psycopg2-{direct,session,transaction}.xml
