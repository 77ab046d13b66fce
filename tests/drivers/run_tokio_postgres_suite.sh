#!/usr/bin/env bash
# tokio-postgres's own integration tests (tests/test/ of the crate published on crates.io) run
# directly against PostgreSQL and through `tandem proxy` in session and transaction mode;
# prints the tests whose outcome differs from the direct run. Not part of CI (minutes long,
# needs crates.io); see tests/drivers/README.md.
#
# The suite hard-codes 127.0.0.1:5433: directly PostgreSQL listens there, through the proxy
# the proxy does (PostgreSQL gets a free port). 5433 must be free.
#
# Usage: tests/drivers/run_tokio_postgres_suite.sh [direct|session|transaction ...] [-- TEST_ARGS]
#   (default: all three runs; TEST_ARGS go to the libtest binary, e.g. a name filter).
#   Environment:
#   TOKIO_POSTGRES_VERSION  crate version (default 0.7.18)
#   SUITE_CACHE       crate copy, its target dir and logs (default /var/tmp/tandem-suites)
#   TANDEM_BIN        the tandem binary (default: $CARGO_TARGET_DIR or target/, debug build)
#   PG_BIN            PostgreSQL server programs (default: pg_config --bindir)
#   TEST_THREADS      libtest --test-threads (default 1)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
version="${TOKIO_POSTGRES_VERSION:-0.7.18}"
cache="${SUITE_CACHE:-/var/tmp/tandem-suites}"
threads="${TEST_THREADS:-1}"
pg_bin="${PG_BIN:-$(pg_config --bindir 2>/dev/null || true)}"
if [[ ! -x "$pg_bin/initdb" ]]; then
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
fi
tandem="${TANDEM_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tandem}"
suite_port=5433

modes=()
test_args=()
while (($#)); do
    case "$1" in
        --) shift; test_args=("$@"); break ;;
        direct|session|transaction) modes+=("$1") ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
((${#modes[@]})) || modes=(direct session transaction)

port_busy() { python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"; }
if port_busy $suite_port; then
    echo "port $suite_port is in use (the tokio-postgres suite hard-codes 127.0.0.1:$suite_port); free it first" >&2
    exit 1
fi

mkdir -p "$cache"
# The crate source: cargo's registry copy, fetched with cargo through a throwaway package.
src="$cache/tokio-postgres-$version"
if [[ ! -f "$src/tests/test/main.rs" ]]; then
    cargo_home="${CARGO_HOME:-$HOME/.cargo}"
    found="$(ls -d "$cargo_home"/registry/src/*/tokio-postgres-"$version" 2>/dev/null | head -1 || true)"
    if [[ -z "$found" ]]; then
        fetch="$cache/fetch-tokio-postgres-$version"
        mkdir -p "$fetch/src" && : >"$fetch/src/lib.rs"
        printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ntokio-postgres = "=%s"\n[workspace]\n' \
            "$version" >"$fetch/Cargo.toml"
        (cd "$fetch" && cargo fetch -q)
        found="$(ls -d "$cargo_home"/registry/src/*/tokio-postgres-"$version" | head -1)"
    fi
    rm -rf "$src" && cp -r "$found" "$src"
fi
# Built once (tests only, every with-* type feature as in upstream CI; not `js`) in a target
# dir of its own; the binary is then run against each mode.
features="$(sed -n '/^\[features\]/,/^\[lib\]/p' "$src/Cargo.toml" | grep -oE '^(with-[A-Za-z0-9_-]+|array-impls)' | paste -sd, -)"
echo "== building tokio-postgres $version tests (log: $cache/tokio-postgres-build.log)"
(cd "$src" && CARGO_TARGET_DIR="$cache/tokio-postgres-target" cargo test --test test --no-run \
    --features "$features" >"$cache/tokio-postgres-build.log" 2>&1) || {
    tail -20 "$cache/tokio-postgres-build.log"; exit 1; }
test_bin="$(sed -n 's/.*Executable .*(\(.*\))$/\1/p' "$cache/tokio-postgres-build.log" | tail -1)"
[[ -x "$test_bin" ]] || { echo "test binary not found in $cache/tokio-postgres-build.log" >&2; exit 1; }

if [[ " ${modes[*]} " != " direct " && ! -x "$tandem" ]]; then
    (cd "$repo" && cargo build -p tandem)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

data="" proxy_pid=""
stop_proxy() {
    if [[ -n "$proxy_pid" ]]; then
        # SIGTERM first; a proxy still waiting for a stuck transaction to finish gets SIGKILL.
        kill "$proxy_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
    fi
    proxy_pid=""
}
cleanup() {
    stop_proxy
    if [[ -n "$data" && -d "$data" ]]; then
        as_postgres "$pg_bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$data"
    fi
    data=""
}
trap cleanup EXIT

# start_proxy MODE LOG ARGS...: the proxy on the suite's port in front of $pg_port.
start_proxy() {
    local mode=$1 log=$2
    shift 2
    "$tandem" proxy --listen "127.0.0.1:$suite_port" --primary "127.0.0.1:$pg_port" --pool-mode "$mode" \
        --control-user postgres --pool-size 100 --log "${TANDEM_LOG:-warn}" "$@" >>"$log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 50); do
        "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$suite_port" && return 0
        sleep 0.2
    done
    echo "proxy did not come up, see $log" >&2
    return 1
}

# run_tests LOG ARGS...: the test binary, appending libtest's output to LOG.
run_tests() {
    local log=$1
    shift
    RUST_BACKTRACE=0 timeout 1200 "$test_bin" --test-threads="$threads" "$@" >>"$log" 2>&1 || true
}

# The password tests (their roles are set up below) and every other test.
password_tests=(plain_password_missing plain_password_wrong plain_password_ok
    md5_password_missing md5_password_wrong md5_password_ok
    scram_password_missing scram_password_wrong scram_password_ok)
skip_password=()
for t in "${password_tests[@]}"; do skip_password+=(--skip "$t"); done

for mode in "${modes[@]}"; do
    # A fresh cluster per run, set up as upstream's docker image (docker/sql_setup.sh): one
    # role per password method with pg_hba rules to match, hstore/citext/ltree. SSL is left
    # off: tokio-postgres's own tests use NoTls only (the TLS tests live in postgres-openssl
    # and postgres-native-tls).
    if port_busy $suite_port; then
        echo "port $suite_port is in use; skipping the $mode run" >&2
        continue
    fi
    data="$(mktemp -d "$cache/pgdata.XXXXXX")"
    [[ $(id -u) == 0 ]] && chown postgres "$data"
    as_postgres "$pg_bin/initdb" -D "$data" -U postgres -A trust >/dev/null
    as_postgres tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE  USER        ADDRESS       METHOD
host    all       pass_user   127.0.0.1/32  password
host    all       md5_user    127.0.0.1/32  md5
host    all       scram_user  127.0.0.1/32  scram-sha-256
host    all       postgres    127.0.0.1/32  trust
local   all       postgres                  trust
EOF
    pg_port=$suite_port
    [[ $mode != direct ]] && pg_port=$(free_port)
    as_postgres "$pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
        -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c jit=off -c max_connections=300" >/dev/null
    # pass_user and md5_user get md5 secrets (as the image's server did when the script was
    # written, so that md5_user really logs in with md5), scram_user a SCRAM one.
    as_postgres "$pg_bin/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres >/dev/null <<'EOF'
SET password_encryption TO 'md5';
CREATE ROLE pass_user PASSWORD 'password' LOGIN;
CREATE ROLE md5_user PASSWORD 'password' LOGIN;
SET password_encryption TO 'scram-sha-256';
CREATE ROLE scram_user PASSWORD 'password' LOGIN;
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE EXTENSION ltree;
EOF
    log="$cache/tokio-postgres-$mode.log"
    : >"$log"
    echo "== $mode: tokio-postgres $version suite on port $suite_port (PostgreSQL on $pg_port)"
    if [[ $mode == direct ]]; then
        run_tests "$log" ${test_args[@]+"${test_args[@]}"}
    else
        plog="$cache/proxy-tokio-postgres-$mode.log"
        : >"$plog"
        # Nearly every test logs in as postgres without a password (trusted by the server), so
        # the proxy trusts clients too; it logs in to the server for the password roles with
        # passwords it is given (--user, clear text, answers any method).
        start_proxy "$mode" "$plog" --auth trust \
            --user pass_user=password --user md5_user=password --user scram_user=password
        run_tests "$log" "${skip_password[@]}" ${test_args[@]+"${test_args[@]}"}
        stop_proxy
        # The password tests need the proxy to check passwords: md5 (SCRAM for SCRAM secrets,
        # as PostgreSQL does) with the server's own secrets through auth_query, so that the
        # proxy logs in with the client's md5 hash or SCRAM ClientKey. pass_user's server
        # rule is `password` (clear text), which no stored secret can answer: the proxy
        # gets its password.
        # (Those of them that TEST_ARGS select, one at a time.)
        selected="$("$test_bin" --list ${test_args[@]+"${test_args[@]}"} 2>/dev/null | sed -n 's/: test$//p')"
        wanted=()
        for t in "${password_tests[@]}"; do
            grep -qx "$t" <<<"$selected" && wanted+=("$t")
        done
        if ((${#wanted[@]})); then
            echo "-- password tests: proxy with --auth md5 and auth_query" >>"$log"
            start_proxy "$mode" "$plog" --auth md5 --user pass_user=password
            for t in "${wanted[@]}"; do
                run_tests "$log" --exact "$t"
            done
        fi
    fi
    echo "$(grep -cE '^test .* \.\.\. ok$' "$log" || true) passed, $(grep -cE '^test .* \.\.\. FAILED$' "$log" || true) failed"
    cleanup
done

# libtest's output to JUnit XML (a test's failure message is the first line of its panic),
# then the same comparison as the Python suites.
python3 - "$cache" <<'EOF'
import re, sys, xml.etree.ElementTree as ET
cache = sys.argv[1]
for mode in ("direct", "session", "transaction"):
    try:
        text = open(f"{cache}/tokio-postgres-{mode}.log", errors="replace").read()
    except FileNotFoundError:
        continue
    outcome = dict(re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)$", text, re.M))
    messages = {}
    for name, body in re.findall(r"^---- (\S+) stdout ----\n(.*?)(?=^---- |^failures:$|\Z)", text, re.M | re.S):
        lines = [l for l in body.splitlines() if l.strip() and not l.startswith("thread ")]
        messages[name] = lines[0][:160] if lines else "panicked"
    suite = ET.Element("testsuite", name=f"tokio-postgres-{mode}")
    for name, result in outcome.items():
        case = ET.SubElement(suite, "testcase", classname="test", name=name)
        if result == "FAILED":
            ET.SubElement(case, "failure", message=messages.get(name, "failed"))
        elif result == "ignored":
            ET.SubElement(case, "skipped", message="#[ignore]")
    ET.ElementTree(suite).write(f"{cache}/tokio-postgres-{mode}.xml")
EOF
python3 "$repo/tests/drivers/junit_diff.py" "$cache"/tokio-postgres-{direct,session,transaction}.xml
