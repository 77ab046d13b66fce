#!/usr/bin/env bash
# pg8000's own test suite (from its sdist) run directly against PostgreSQL and through
# `tandem proxy` in session and transaction mode; prints the tests whose outcome differs from
# the direct run. Not part of CI (minutes long, needs PyPI); see tests/drivers/README.md.
#
# pg8000 is pure Python and speaks the protocol itself: the extended protocol with an unnamed
# statement per query (Parse/Bind/Describe/Execute/Sync), named statements for its prepared
# statement API, COPY with file-like streams, and SCRAM. The cluster is set up as a drop-in
# deployment would be: every TCP login needs the password (scram-sha-256, user postgres,
# password `pw`, the suite's default), and the proxy runs with `--auth scram`, checking the
# client against the server's own secret (auth_query) and logging in to the server with the
# client key recovered from the client's proof; no password list.
#
# Usage: tests/drivers/run_pg8000_suite.sh [direct|session|transaction ...] [-- PYTEST_ARGS]
#   (default: all three runs). Environment:
#   PG8000_VERSION  sdist version (default 1.31.6)
#   SUITE_CACHE, TANDEM_BIN, PG_BIN, TANDEM_LOG: see suite_lib.sh
#   TEST_TIMEOUT    seconds per test before pytest-timeout fails it (default 60)
set -euo pipefail

. "$(dirname "$0")/suite_lib.sh"
version="${PG8000_VERSION:-1.31.6}"
test_timeout="${TEST_TIMEOUT:-60}"
suite_init "$@"

venv="$cache/venv-pg8000-$version"
if [[ ! -x "$venv/bin/pytest" ]]; then
    # The test requirements of the upstream workflow; pytz for the time zone tests.
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "pg8000==$version" pytest pytest-mock pytest-benchmark pytz \
        pytest-timeout
fi
copy_sdist_tests "$venv/bin/pip" pg8000 "$version" test

ensure_tandem

for mode in "${modes[@]}"; do
    init_cluster --auth-host=scram-sha-256 --auth-local=trust
    start_cluster "$(free_port)"
    # admin_sql logs in over TCP: the password is set through the socket first.
    as_postgres "$pg_bin/psql" -q -X -h /tmp -p "$pg_port" -U postgres -d postgres \
        -c "ALTER ROLE postgres PASSWORD 'pw'" >/dev/null
    export PGPASSWORD=pw
    admin_sql postgres -c "CREATE EXTENSION hstore"
    port=$pg_port
    if [[ $mode != direct ]]; then
        port=$(free_port)
        : >"$cache/proxy-pg8000-$mode.log"
        start_proxy "$port" "$mode" "$cache/proxy-pg8000-$mode.log" --auth scram \
            --control-password pw
    fi
    echo "== $mode: pg8000 $version suite on port $port"
    # As upstream's workflow runs it, with -W error turning warnings into failures. Left out:
    # the GSS and SSL auth tests (no Kerberos; the server has no certificate) and the README
    # doctest (it wants a server on the default port). The md5 and password auth tests only
    # log in, which they do here with SCRAM. The benchmarks run once each.
    (cd "$work" && PGHOST=127.0.0.1 PGPORT=$port PGPASSWORD=pw \
        timeout 1800 "$venv/bin/python" -m pytest -p no:cacheprovider -q -rN -W error \
        -o addopts="--tb=short" --timeout="$test_timeout" --benchmark-disable \
        --ignore-glob="*/auth/test_gss.py" --ignore-glob="*/auth/test_*_ssl.py" \
        --ignore=test/test_readme.py --junitxml="$cache/pg8000-$mode.xml" \
        ${extra_args[@]+"${extra_args[@]}"} test >"$cache/pg8000-$mode.log" 2>&1) || true
    grep -E "[0-9]+ (passed|failed)" "$cache/pg8000-$mode.log" | tail -1 || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/pg8000-{direct,session,transaction}.xml
