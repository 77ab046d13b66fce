#!/usr/bin/env bash
# asyncpg's own test suite (from its sdist) run directly against PostgreSQL and through
# `tandem proxy` in session and transaction mode; prints the tests whose outcome differs from
# the direct run. Not part of CI (minutes long, needs PyPI); see tests/drivers/README.md.
#
# Usage: tests/drivers/run_asyncpg_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs). Environment:
#   ASYNCPG_VERSION   sdist/wheel version (default 0.32.0)
#   SUITE_CACHE, TANDEM_BIN, PG_BIN, TANDEM_LOG: see suite_lib.sh
#   TEST_TIMEOUT      seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

. "$(dirname "$0")/suite_lib.sh"
version="${ASYNCPG_VERSION:-0.32.0}"
test_timeout="${TEST_TIMEOUT:-60}"
suite_init "$@"

venv="$cache/venv-asyncpg-$version"
if [[ ! -x "$venv/bin/pytest" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "asyncpg==$version" pytest pytest-timeout distro uvloop
fi
# The tests import the installed (compiled) asyncpg, not the sdist's uncompiled sources.
copy_sdist_tests "$venv/bin/pip" asyncpg "$version" tests

ensure_tandem

for mode in "${modes[@]}"; do
    init_cluster
    start_cluster "$(free_port)"
    connect_port "$mode" "$cache/proxy-$mode.log"
    echo "== $mode: asyncpg $version suite on port $port"
    (cd "$work" && PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres \
        timeout 1800 "$venv/bin/python" -m pytest -p no:cacheprovider -q -rN \
        -o addopts="--tb=short --import-mode=importlib" --timeout="$test_timeout" \
        --junitxml="$cache/asyncpg-$mode.xml" ${extra_args[@]+"${extra_args[@]}"} tests \
        >"$cache/asyncpg-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/asyncpg-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/asyncpg-{direct,session,transaction}.xml
