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
#   SUITE_CACHE, TANDEM_BIN, PG_BIN, TANDEM_LOG: see suite_lib.sh (the cache also holds the
#                     crate copy and its target dir)
#   TEST_THREADS      libtest --test-threads (default 1)
set -euo pipefail

. "$(dirname "$0")/suite_lib.sh"
version="${TOKIO_POSTGRES_VERSION:-0.7.18}"
threads="${TEST_THREADS:-1}"
suite_port=5433
suite_init "$@"

port_busy() { python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"; }
if port_busy $suite_port; then
    echo "port $suite_port is in use (the tokio-postgres suite hard-codes 127.0.0.1:$suite_port); free it first" >&2
    exit 1
fi

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

ensure_tandem

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
    init_cluster
    as_postgres tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE  USER        ADDRESS       METHOD
host    all       pass_user   127.0.0.1/32  password
host    all       md5_user    127.0.0.1/32  md5
host    all       scram_user  127.0.0.1/32  scram-sha-256
host    all       postgres    127.0.0.1/32  trust
local   all       postgres                  trust
EOF
    port=$suite_port
    [[ $mode != direct ]] && port=$(free_port)
    start_cluster "$port"
    # pass_user and md5_user get md5 secrets (as the image's server did when the script was
    # written, so that md5_user really logs in with md5), scram_user a SCRAM one.
    admin_sql postgres <<'EOF'
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
        run_tests "$log" ${extra_args[@]+"${extra_args[@]}"}
    else
        plog="$cache/proxy-tokio-postgres-$mode.log"
        : >"$plog"
        # Nearly every test logs in as postgres without a password (trusted by the server), so
        # the proxy trusts clients too; it logs in to the server for the password roles with
        # passwords it is given (--user, clear text, answers any method).
        start_proxy "$suite_port" "$mode" "$plog" --auth trust \
            --user pass_user=password --user md5_user=password --user scram_user=password
        run_tests "$log" "${skip_password[@]}" ${extra_args[@]+"${extra_args[@]}"}
        stop_proxy
        # The password tests need the proxy to check passwords: md5 (SCRAM for SCRAM secrets,
        # as PostgreSQL does) with the server's own secrets through auth_query, so that the
        # proxy logs in with the client's md5 hash or SCRAM ClientKey. pass_user's server
        # rule is `password` (clear text), which no stored secret can answer: the proxy
        # gets its password.
        # (Those of them that TEST_ARGS select, one at a time.)
        selected="$("$test_bin" --list ${extra_args[@]+"${extra_args[@]}"} 2>/dev/null | sed -n 's/: test$//p')"
        wanted=()
        for t in "${password_tests[@]}"; do
            grep -qx "$t" <<<"$selected" && wanted+=("$t")
        done
        if ((${#wanted[@]})); then
            echo "-- password tests: proxy with --auth md5 and auth_query" >>"$log"
            start_proxy "$suite_port" "$mode" "$plog" --auth md5 --user pass_user=password
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
