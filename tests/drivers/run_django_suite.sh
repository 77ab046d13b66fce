#!/usr/bin/env bash
# Django's own test suite (from its sdist; a PostgreSQL-heavy subset) run directly against
# PostgreSQL and through `tandem proxy` in session and transaction mode, with psycopg2 (or
# psycopg 3); prints the tests whose outcome differs from the direct run. Not part of CI (minutes long, needs PyPI
# and libpq-dev to build psycopg2); see tests/drivers/README.md.
#
# Usage: tests/drivers/run_django_suite.sh [direct|session|transaction ...] [-- RUNTESTS_ARGS]
#   (default: all three runs; RUNTESTS_ARGS that are test labels, i.e. not options, replace the
#   default subset, e.g. `-- select_for_update backends.postgresql`). Environment:
#   DJANGO_VERSION   sdist version (default 5.1.4)
#   DJANGO_DRIVER    psycopg2 (default) or psycopg (3, with Django's server_side_binding:
#                    parameters bound by the server, and psycopg's automatic prepared
#                    statements after 5 executions of a query; psycopg_pool for the
#                    connection pool tests)
#   DJANGO_TESTS     the test labels (default below)
#   DJANGO_PARALLEL  runtests.py --parallel (default 1; 2 or more clones the test databases
#                    with CREATE DATABASE ... TEMPLATE, through the proxy too; a class skipped
#                    as a whole is then reported per test instead of as its setUpClass)
#   SUITE_CACHE, TANDEM_BIN, PG_BIN, TANDEM_LOG: see suite_lib.sh
#   RUN_TIMEOUT      seconds for one whole run (default 2400; Django has no per-test timeout)
set -euo pipefail

. "$(dirname "$0")/suite_lib.sh"
version="${DJANGO_VERSION:-5.1.4}"
driver="${DJANGO_DRIVER:-psycopg2}"
case "$driver" in
    psycopg2) driver_pkg="psycopg2==2.9.10"; driver_mod=psycopg2 ;;
    psycopg) driver_pkg="psycopg==3.2.3 psycopg-pool==3.2.4"; driver_mod="psycopg, psycopg_pool" ;;
    *) echo "DJANGO_DRIVER must be psycopg2 or psycopg" >&2; exit 2 ;;
esac
parallel="${DJANGO_PARALLEL:-1}"
run_timeout="${RUN_TIMEOUT:-2400}"
# The whole suite takes far too long through a debug proxy; this subset (the PostgreSQL
# backend's and contrib.postgres's tests and the ORM tests that exercise the database most)
# takes a few minutes a run.
default_tests="postgres_tests backends transactions transaction_hooks select_for_update queries
    basic model_fields expressions aggregation db_functions schema introspection migrations
    lookup ordering update delete get_or_create bulk_create constraints indexes model_indexes
    async raw_query multiple_database timezones datetimes inspectdb fixtures test_utils
    prefetch_related many_to_many"
read -r -d '' -a tests <<<"${DJANGO_TESTS:-$default_tests}" || true

suite_init "$@"
for arg in ${extra_args[@]+"${extra_args[@]}"}; do
    [[ $arg != -* ]] && tests=() && break
done

venv="$cache/venv-django-$version"
[[ $driver == psycopg2 ]] || venv="$venv-$driver"
if [[ ! -x "$venv/bin/python" || ! -d "$venv/lib" ]] || ! "$venv/bin/python" -c "import $driver_mod, xmlrunner" 2>/dev/null; then
    # One driver per venv, as Django prefers psycopg 3 when both are installed. psycopg2 is
    # built against the system libpq; psycopg 3 is its pure-Python flavour, which loads the
    # system libpq. The test requirements (tests/requirements/py3.txt) the chosen
    # labels use; memcached, redis, selenium, geoip2 and the like are left out.
    # unittest-xml-reporting gives the JUnit report.
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-binary psycopg2 $driver_pkg "asgiref>=3.8.1" \
        "sqlparse>=0.3.1" tblib tzdata PyYAML Pillow numpy jinja2 argon2-cffi bcrypt docutils \
        unittest-xml-reporting
fi
src="$cache/Django-$version"
if [[ ! -f "$src/tests/runtests.py" ]]; then
    unpack_sdist "$venv/bin/pip" django "$version"
    [[ -d "$src" ]] || mv "$cache/django-$version" "$src"
fi
# Django is not installed: the sdist's own django/ comes first on PYTHONPATH, with the
# settings module below (tests/README.rst's "Using another settings module").
work="$cache/run-django-$version"
rm -rf "$work" && mkdir -p "$work"
cat >"$work/test_postgres.py" <<'EOF'
import os

_port = int(os.environ["DJANGO_SUITE_PORT"])
_common = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": "127.0.0.1",
    "PORT": _port,
    "USER": "postgres",
    # Django's documentation: with transaction pooling, server-side cursors (a named cursor
    # outliving a transaction in autocommit) must be disabled.
    "DISABLE_SERVER_SIDE_CURSORS": os.environ.get("DJANGO_SUITE_MODE") == "transaction",
}
if os.environ.get("DJANGO_SUITE_DRIVER") == "psycopg":
    # Server-side binding: Django's psycopg 3 default binds parameters client-side.
    _common["OPTIONS"] = {"server_side_binding": True}
DATABASES = {
    "default": {**_common, "NAME": "django"},
    "other": {**_common, "NAME": "django_other"},
}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
# runtests.py has no --testrunner; it takes TEST_RUNNER from the settings. unittest-xml-reporting's
# runner writes one JUnit file and prints one line per test.
TEST_RUNNER = "xmlrunner.extra.djangotestrunner.XMLTestRunner"
TEST_OUTPUT_DIR = os.environ["DJANGO_SUITE_OUT"]
TEST_OUTPUT_FILE_NAME = os.environ["DJANGO_SUITE_XML"]
TEST_OUTPUT_VERBOSE = 2
EOF

ensure_tandem

name="django"
[[ $driver == psycopg2 ]] || name="django-$driver"
for mode in "${modes[@]}"; do
    init_cluster -E UTF8
    start_cluster "$(free_port)"
    # The settings' databases; Django creates (and at the end drops) test_django and
    # test_django_other itself, through the proxy in the proxied runs, and the extensions
    # postgres_tests needs in migrations of its own (contrib extensions, superuser).
    admin_sql postgres -c "CREATE DATABASE django" -c "CREATE DATABASE django_other"
    connect_port "$mode" "$cache/proxy-$name-$mode.log"
    echo "== $mode: Django $version suite ($driver) on port $port"
    rm -f "$cache/$name-$mode.xml"
    (cd "$src/tests" && PYTHONPATH="$work:$src" DJANGO_SUITE_PORT=$port DJANGO_SUITE_MODE=$mode \
        DJANGO_SUITE_DRIVER=$driver DJANGO_SUITE_OUT="$cache" DJANGO_SUITE_XML="$name-$mode.xml" \
        timeout "$run_timeout" "$venv/bin/python" -Wd runtests.py --settings=test_postgres \
        --parallel="$parallel" --noinput -v 1 ${tests[@]+"${tests[@]}"} \
        ${extra_args[@]+"${extra_args[@]}"} \
        >"$cache/$name-$mode.log" 2>&1) || true
    grep -E "^Ran [0-9]+ tests|^(OK|FAILED)" "$cache/$name-$mode.log" | tail -2 | paste -sd ' ' || true
    cleanup
done

python3 "$repo/tests/drivers/junit_diff.py" "$cache"/$name-{direct,session,transaction}.xml
