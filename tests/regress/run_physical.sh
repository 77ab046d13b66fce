#!/usr/bin/env bash
#
# run_physical.sh -- PostgreSQL's regression suite as the workload of a Tandem
# physical cluster (issue #15, "the regression suite as a workload").
#
# Usage:
#   tests/regress/run_physical.sh [--allow-fail "t1 t2 ..."] [--no-baseline]
#                                 [--mid-run-delay S] [--suite-timeout S]
#                                 [--fsync] [--keep]
#
# On loopback, with free ports, everything under a temp dir:
#   0. baseline (unless --no-baseline): a plain primary, no Tandem, same
#      settings; run_regress.sh + the same mid-run workload as below; then
#      removed. Its result is what the run with Tandem must equal.
#   1. initdb a primary (--locale=C -E UTF8, trust on loopback incl.
#      replication, wal_log_hints=on, max_wal_senders/slots 16);
#   2. two standbys s1, s2 made by `tandem replica add` (pg_basebackup + slot +
#      restore_command = tandem wal-fetch from the relay's WAL dir), then
#      `tandem replicator` in physical SYNC mode, k=1, with s1 and s2;
#   3. waits until GET /status shows the relay and both standbys `streaming`
#      and the primary has synchronous_standby_names = ANY 1 ("s1", "s2", "tandem_relay");
#   4. runs run_regress.sh against the primary; --mid-run-delay seconds in (default
#      10), in the background: a role, an in-place tablespace, a database
#      `created_mid_run` with a table (and a table in that tablespace) and rows.
#      While the suite runs, pg_stat_activity is sampled for sessions waiting in
#      SyncRep (commits waiting for the quorum) and /status for member lag;
#   5. checks the result equals the baseline (same passed/total counts, same
#      failed tests) and that no commit hung: the suite finished within
#      --suite-timeout (default 900 s) and in at most max(3 x baseline,
#      baseline + 120 s), and no commit was seen waiting in SyncRep for more
#      than 30 s;
#   6. compare_nodes.sh primary vs s1 and s2 (waits for replay): must be
#      IDENTICAL; plus explicit checks that created_mid_run, its rows, the role
#      and the tablespace are on both standbys;
#   7. stops the replicator with SIGTERM (a clean stop must take the relay out
#      of the quorum: ANY 1 ("s1", "s2")), prints a summary and the relay's
#      /status (lag per member). Exit 0 only if all checks hold.
#
# Tablespaces on one host: a physical standby replays CREATE TABLESPACE into the
# same absolute path as the primary. On one host that path is the primary's own
# directory: PG 15 recovery finds PG_15_* there, does not complain (it only
# errors outside recovery) and symlinks pg_tblspc/OID to it, so the standby would
# replay into the primary's files. The mid-run tablespace is therefore an
# in-place tablespace (SET allow_in_place_tablespaces = on; CREATE TABLESPACE ...
# LOCATION ''), a PG 15 developer option: the directory is pg_tblspc/OID inside
# each node's own data dir, and redo creates it there on the standbys (no GUC
# needed on them). PostgreSQL's own tablespace test does the same.
#
# Needs root (servers run as the postgres OS user) or to be run as the server
# user itself; jq, curl, ss. PostgreSQL servers use fsync=off unless --fsync (the
# relay's pg_receivewal fsyncs regardless).
# Environment: TANDEM (default /var/tmp/tandem-regress-bin/tandem: a copy, since
# standbys' restore_command embeds the path of the binary that ran `replica add`),
# PG_BINDIR (default /usr/lib/postgresql/15/bin), SUITE_CACHE (see run_regress.sh).
# --keep keeps the temp dir (logs, data dirs, samples) and run_regress.sh's output
# dirs ($SUITE_CACHE/regress-out-PORT: regression.diffs) after exit; without it they
# are removed. Servers and tandem processes are stopped either way (also on
# failure, SIGTERM and Ctrl-C).
# Exit: 0 all checks hold, 1 a check failed, 2 usage/setup error.

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/${PG_MAJOR:-15}/bin}
export PG_BINDIR
TANDEM=${TANDEM:-/var/tmp/tandem-regress-bin/tandem}
ALLOW_FAIL=""
BASELINE=1
MID_DELAY=10
SUITE_TIMEOUT=900
FSYNC=off
KEEP=0
SYNCREP_HANG=30      # a commit waiting longer than this in SyncRep counts as hung

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --allow-fail) ALLOW_FAIL=${2?}; shift 2 ;;
        --no-baseline) BASELINE=0; shift ;;
        --mid-run-delay) MID_DELAY=${2:?}; shift 2 ;;
        --suite-timeout) SUITE_TIMEOUT=${2:?}; shift 2 ;;
        --fsync) FSYNC=on; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

T0=$SECONDS
say()  { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
die()  { echo "run_physical: ERROR: $*" >&2; exit 2; }
for tool in jq curl ss; do command -v "$tool" >/dev/null || die "$tool is needed"; done
[[ -x "$TANDEM" ]] || die "no tandem binary at $TANDEM (set TANDEM=...)"
[[ -x "$PG_BINDIR/postgres" ]] || die "no PostgreSQL in $PG_BINDIR"

if [[ $(id -u) == 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# ---------------------------------------------------------------------------
# temp dir, ports, cleanup
# ---------------------------------------------------------------------------
T=$(mktemp -d /tmp/tandem-regress-physical.XXXXXX)
chmod 755 "$T"
[[ $(id -u) == 0 ]] && chown postgres:postgres "$T"

RELAY_PID=""
NODES=()            # data dirs of servers we started
PB=""; PP=""        # baseline / primary ports (their run_regress.sh output dirs are removed at exit)

stop_relay() {  # SIGTERM, wait up to 30 s, then SIGKILL
    [[ -n "$RELAY_PID" ]] || return 0
    if kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$RELAY_PID" 2>/dev/null; then
            echo "run_physical: the replicator did not stop within 30 s of SIGTERM; killing it" >&2
            kill -KILL "$RELAY_PID" 2>/dev/null || true
        fi
    fi
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # only jobs still running: a finished job's PID is reaped and may belong to someone else by now
    local p
    for p in $(jobs -rp); do [[ "$p" == "$RELAY_PID" ]] || kill "$p" 2>/dev/null; done
    stop_relay
    local i
    for (( i = ${#NODES[@]} - 1; i >= 0; i-- )); do
        [[ -f "${NODES[$i]}/postmaster.pid" ]] \
            && as_pg "$PG_BINDIR/pg_ctl" -D "${NODES[$i]}" -m immediate -w -t 30 stop >/dev/null 2>&1
    done
    wait 2>/dev/null
    local suite_out=${SUITE_CACHE:-/var/tmp/tandem-suites}/regress-out-
    if [[ $KEEP == 1 ]]; then
        echo "run_physical: kept $T (servers stopped) and ${suite_out}{$PB,$PP}"
    else
        rm -rf "$T"
        [[ -n "$PB" ]] && rm -rf "$suite_out$PB"
        [[ -n "$PP" ]] && rm -rf "$suite_out$PP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "run_physical: interrupted" >&2; exit 130' INT
trap 'echo "run_physical: terminated" >&2; exit 143' TERM

USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] || continue
        USED_PORTS+="$p "
        echo "$p"
        return 0
    done
    die "no free port found"
}
PB=$(free_port); PP=$(free_port); PS1=$(free_port); PS2=$(free_port); PSTAT=$(free_port)

psql_at() {  # PORT DB SQL...  (each SQL a separate -c in one session)
    local port=$1 db=$2 sql; shift 2
    local args=()
    for sql in "$@"; do args+=(-c "$sql"); done
    PGCONNECT_TIMEOUT=10 "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "${args[@]}" </dev/null
}

init_primary() {  # NAME PORT
    local dir=$T/$1
    as_pg "$PG_BINDIR/initdb" -D "$dir" --locale=C -E UTF8 -U postgres -A trust >"$T/$1.initdb.log" 2>&1 \
        || { cat "$T/$1.initdb.log" >&2; die "initdb $1 failed"; }
    # initdb -A trust: trust for local, 127.0.0.1/32 and ::1, replication lines included.
    cat >> "$dir/postgresql.conf" <<EOF

# run_physical.sh
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$T'
wal_level = replica
max_wal_senders = 16
max_replication_slots = 16
wal_log_hints = on
hot_standby = on
fsync = $FSYNC
EOF
    NODES+=("$dir")
    as_pg "$PG_BINDIR/pg_ctl" -D "$dir" -l "$T/$1.log" -w -t 60 start >/dev/null \
        || { tail -20 "$T/$1.log" >&2; die "could not start $1"; }
}

# ---------------------------------------------------------------------------
# mid-run workload and samplers
# ---------------------------------------------------------------------------

# mid_run PORT OUT REGRESS_PID: after MID_DELAY s, creates a role, an in-place
# tablespace, database created_mid_run with two tables and rows; logs each step
# with its duration and whether the suite was still running when it finished.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }
mid_run() {
    local port=$1 out=$2 rpid=$3 t s
    sleep "$MID_DELAY"
    step() {  # LABEL DB SQL...
        local label=$1 db=$2; shift 2
        t=$(date +%s.%N)
        if psql_at "$port" "$db" "$@" >>"$out.psql" 2>&1; then s=ok; else s=FAILED; fi
        echo "$s $label $(since "$t")" >> "$out"
    }
    echo "start $(date +%s.%N)" >> "$out"
    step role postgres "CREATE ROLE mid_run_role LOGIN PASSWORD 'mid-run-secret'"
    step tablespace postgres "SET allow_in_place_tablespaces = on" "CREATE TABLESPACE mid_run_ts LOCATION ''"
    step database postgres "CREATE DATABASE created_mid_run"
    step table created_mid_run \
        "CREATE TABLE mid_t (id int PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL DEFAULT now())" \
        "INSERT INTO mid_t (id, v) SELECT g, md5(g::text) FROM generate_series(1, 10000) g" \
        "GRANT SELECT ON mid_t TO mid_run_role"
    step ts_table created_mid_run \
        "CREATE TABLE mid_ts_t (id int PRIMARY KEY, payload text) TABLESPACE mid_run_ts" \
        "INSERT INTO mid_ts_t SELECT g, repeat('x', g % 100) FROM generate_series(1, 1000) g"
    # many small commits, each of which waits for the quorum with Tandem attached
    local i
    t=$(date +%s.%N)
    s=ok
    for i in $(seq 1 50); do
        psql_at "$port" created_mid_run "UPDATE mid_t SET v = 'updated $i' WHERE id = $i" >>"$out.psql" 2>&1 || s=FAILED
    done
    echo "$s 50_commits $(since "$t")" >> "$out"
    if kill -0 "$rpid" 2>/dev/null; then echo "suite_running_at_end yes" >> "$out"; else echo "suite_running_at_end no" >> "$out"; fi
    echo "end $(date +%s.%N)" >> "$out"
}

# sampler PORT STATUS_URL OUT_SYNCREP OUT_PGLAG OUT_STATUS: every 0.5 s, sessions
# waiting in SyncRep ("epoch|pid|query_start") and PostgreSQL's own per-member lag
# from pg_stat_replication ("name|write_lag|flush_lag|replay_lag", seconds); every
# 2nd round the relay's /status.
sampler() {
    local port=$1 url=$2 out_sr=$3 out_lag=$4 out_st=$5 n=0
    while :; do
        psql_at "$port" postgres "SELECT extract(epoch FROM clock_timestamp())::numeric(20,3), pid, query_start
                                  FROM pg_stat_activity WHERE wait_event = 'SyncRep'" >> "$out_sr" 2>/dev/null || true
        psql_at "$port" postgres "SELECT application_name, coalesce(extract(epoch FROM write_lag), 0),
                                         coalesce(extract(epoch FROM flush_lag), 0), coalesce(extract(epoch FROM replay_lag), 0)
                                  FROM pg_stat_replication" >> "$out_lag" 2>/dev/null || true
        if [[ -n "$url" && $((n % 2)) == 0 ]]; then
            curl -fsS -m 2 "$url" 2>/dev/null | jq -c '.primary.lsn as $p | [.relay, .standbys[]] | map({name, state, lag_bytes, lag_seconds, flushed, replayed, primary: $p})' >> "$out_st" 2>/dev/null || true
        fi
        n=$((n + 1))
        sleep 0.5
    done
}

# run_suite LABEL PORT -> sets R_RC R_PASSED R_TOTAL R_FAILED R_SECS; mid-run workload in the background
run_suite() {
    local label=$1 port=$2 url=${3:-}
    local log=$T/regress-$label.txt mid=$T/midrun-$label.txt
    : > "$T/syncrep-$label.txt"; : > "$T/pglag-$label.txt"; : > "$T/status-samples-$label.txt"
    sampler "$port" "$url" "$T/syncrep-$label.txt" "$T/pglag-$label.txt" "$T/status-samples-$label.txt" &
    local spid=$!
    local t0=$SECONDS
    set +e
    timeout -k 10 "$SUITE_TIMEOUT" "$HERE/run_regress.sh" --host 127.0.0.1 --port "$port" --user postgres \
        ${ALLOW_FAIL:+--allow-fail "$ALLOW_FAIL"} > "$log" 2>&1 &
    local rpid=$!
    mid_run "$port" "$mid" "$rpid" &
    local mpid=$!
    wait "$rpid"
    R_RC=$?
    R_SECS=$((SECONDS - t0))
    wait "$mpid"
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
    set -e
    grep -E '^(regress|run_regress):' "$log" | sed "s/^/    [$label] /"
    R_PASSED=$(sed -nE 's/^regress: ([0-9]+) of ([0-9]+) tests passed.*/\1/p' "$log" | tail -1)
    R_TOTAL=$(sed -nE 's/^regress: ([0-9]+) of ([0-9]+) tests passed.*/\2/p' "$log" | tail -1)
    R_FAILED=$(sed -nE 's/^regress: failed tests: //p' "$log" | tail -1)
    [[ $R_RC == 124 || $R_RC == 137 ]] && say "$label: the suite did not finish within $SUITE_TIMEOUT s (killed)"
    sed "s/^/    [$label] mid-run: /" "$mid" | grep -v ' start \| end ' || true
    if grep -q FAILED "$mid" 2>/dev/null; then
        sed "s/^/    [$label] mid-run psql: /" "$mid.psql" | tail -5
    fi
}

FAILS=()
check() {  # DESCRIPTION CONDITION-RESULT(0/1)
    if [[ $2 == 0 ]]; then say "ok    $1"; else say "FAIL  $1"; FAILS+=("$1"); fi
}

echo "run_physical: temp dir $T; ports: baseline $PB, primary $PP, s1 $PS1, s2 $PS2, relay status $PSTAT"
echo "run_physical: tandem $TANDEM ($("$TANDEM" --version 2>/dev/null || echo '?')), $("$PG_BINDIR/postgres" --version)"

# ---------------------------------------------------------------------------
# 0. baseline without Tandem
# ---------------------------------------------------------------------------
B_PASSED=""; B_TOTAL=""; B_FAILED=""; B_SECS=""; B_RC=""
if [[ $BASELINE == 1 ]]; then
    say "baseline: plain primary on :$PB (no Tandem), suite + mid-run workload"
    init_primary baseline "$PB"
    run_suite baseline "$PB"
    B_RC=$R_RC; B_PASSED=$R_PASSED; B_TOTAL=$R_TOTAL; B_FAILED=$R_FAILED; B_SECS=$R_SECS
    say "baseline: $B_PASSED of $B_TOTAL passed in $B_SECS s (run_regress exit $B_RC)"
    as_pg "$PG_BINDIR/pg_ctl" -D "$T/baseline" -m fast -w stop >/dev/null
    rm -rf "$T/baseline"
    NODES=()
fi

# ---------------------------------------------------------------------------
# 1.-3. primary, standbys, relay
# ---------------------------------------------------------------------------
PRIMARY_URL="postgres://postgres@127.0.0.1:$PP/postgres"
say "primary: initdb + start on :$PP"
init_primary primary "$PP"

for sb in s1:$PS1 s2:$PS2; do
    name=${sb%%:*}; port=${sb##*:}
    say "standby $name: tandem replica add on :$port"
    t=$SECONDS
    NODES+=("$T/$name")
    "$TANDEM" replica add "$name" --from "$PRIMARY_URL" --data-dir "$T/$name" --port "$port" \
        --relay "$T/relay/wal" > "$T/replica-add-$name.log" 2>&1 \
        || { cat "$T/replica-add-$name.log" >&2; tail -20 "$T/$name.log" >&2 2>/dev/null; die "tandem replica add $name failed"; }
    sed "s/^/    /" "$T/replica-add-$name.log"
    say "standby $name: made and started in $((SECONDS - t)) s"
done

say "relay: tandem replicator (physical, sync, k=1) with status on 127.0.0.1:$PSTAT"
"$TANDEM" replicator --primary "$PRIMARY_URL" --mode sync --sync-quorum 1 --data-dir "$T/relay" \
    --status-listen "127.0.0.1:$PSTAT" \
    --replica "s1=postgres://postgres@127.0.0.1:$PS1/postgres" \
    --replica "s2=postgres://postgres@127.0.0.1:$PS2/postgres" > "$T/relay.log" 2>&1 &
RELAY_PID=$!
STATUS_URL="http://127.0.0.1:$PSTAT/status"
WANT_SSN='ANY 1 ("s1", "s2", "tandem_relay")'

t=$SECONDS
ready=0
while (( SECONDS - t < 120 )); do
    if ! kill -0 "$RELAY_PID" 2>/dev/null; then
        cat "$T/relay.log" >&2; die "the replicator exited during start-up"
    fi
    st=$(curl -fsS -m 2 "$STATUS_URL" 2>/dev/null || true)
    if [[ -n "$st" ]] \
        && jq -e '.relay.state == "streaming" and (.standbys | length == 2) and all(.standbys[]; .state == "streaming")' <<<"$st" >/dev/null \
        && [[ "$(psql_at "$PP" postgres "SHOW synchronous_standby_names")" == "$WANT_SSN" ]]; then
        ready=1; break
    fi
    sleep 0.5
done
if [[ $ready != 1 ]]; then
    echo "last /status: ${st:-none}" >&2
    echo "synchronous_standby_names: $(psql_at "$PP" postgres "SHOW synchronous_standby_names" 2>&1)" >&2
    tail -30 "$T/relay.log" >&2
    die "relay and standbys not streaming / quorum not set within 120 s"
fi
say "ready after $((SECONDS - t)) s: relay, s1, s2 streaming; synchronous_standby_names = $WANT_SSN"
psql_at "$PP" postgres "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1" \
    | sed 's/^/    pg_stat_replication: /'
# a commit now must wait for the quorum: sanity-check that synchronous_commit is on
[[ "$(psql_at "$PP" postgres "SHOW synchronous_commit")" == on ]] || die "synchronous_commit is not on"

# ---------------------------------------------------------------------------
# 4.-5. the suite against the primary with Tandem attached
# ---------------------------------------------------------------------------
say "suite: run_regress.sh against the primary :$PP (mid-run workload at +${MID_DELAY} s)"
run_suite tandem "$PP" "$STATUS_URL"
T_RC=$R_RC; T_PASSED=$R_PASSED; T_TOTAL=$R_TOTAL; T_FAILED=$R_FAILED; T_SECS=$R_SECS
say "suite with Tandem: ${T_PASSED:-?} of ${T_TOTAL:-?} passed in $T_SECS s (run_regress exit $T_RC)"

check "run_regress.sh exit 0 with Tandem attached (all failures in --allow-fail)" "$([[ $T_RC == 0 ]]; echo $?)"
if [[ $BASELINE == 1 ]]; then
    check "same result as without Tandem: $T_PASSED of $T_TOTAL vs $B_PASSED of $B_TOTAL, same failed tests" \
        "$([[ -n "$T_PASSED" && "$T_PASSED" == "$B_PASSED" && "$T_TOTAL" == "$B_TOTAL" && "$T_FAILED" == "$B_FAILED" && "$T_RC" == "$B_RC" ]]; echo $?)"
    limit=$(( B_SECS * 3 > B_SECS + 120 ? B_SECS * 3 : B_SECS + 120 ))
    check "suite finished in normal time: $T_SECS s with Tandem vs $B_SECS s without (limit $limit s)" \
        "$([[ $T_RC != 124 && $T_RC != 137 && $T_SECS -le $limit ]]; echo $?)"
else
    check "suite finished within --suite-timeout $SUITE_TIMEOUT s ($T_SECS s)" "$([[ $T_RC != 124 && $T_RC != 137 ]]; echo $?)"
fi

# SyncRep waits: span between first and last sighting of the same (pid, query_start)
read -r SR_SAMPLES SR_KEYS SR_MAX <<<"$(awk -F'|' 'NF >= 3 { k = $2 "|" $3; if (!(k in first)) first[k] = $1; last[k] = $1; n++ }
    END { m = 0; c = 0; for (k in first) { c++; d = last[k] - first[k]; if (d > m) m = d } printf "%d %d %.1f\n", n, c, m }' \
    "$T/syncrep-tandem.txt")"
say "SyncRep: $SR_SAMPLES sightings of $SR_KEYS distinct commits waiting for the quorum (sampled every 0.5 s, i.e. roughly $((SR_SAMPLES / 2)) session-seconds of waiting); longest seen waiting: ${SR_MAX} s"
check "no commit hung in SyncRep (longest observed wait ${SR_MAX} s <= ${SYNCREP_HANG} s)" \
    "$(awk -v m="$SR_MAX" -v l="$SYNCREP_HANG" 'BEGIN { exit !(m <= l) }'; echo $?)"

mid=$T/midrun-tandem.txt
check "mid-run workload succeeded, while the suite was running" \
    "$([[ $(grep -c '^ok ' "$mid" 2>/dev/null) == 6 ]] && grep -q 'suite_running_at_end yes' "$mid"; echo $?)"

# max lag per member seen during the run: Tandem's /status and PostgreSQL's pg_stat_replication
say "lag per member during the suite (max over samples):"
LAG_LINES=""
if [[ -s "$T/status-samples-tandem.txt" ]]; then
    LAG_LINES+=$(jq -rs 'map(.[]) | group_by(.name)[] | "tandem /status      \(.[0].name): lag_bytes \((map(.lag_bytes // 0) | max)), lag_seconds \((map(.lag_seconds // 0) | max) * 1000 | round / 1000) s, \(length) samples, states \(map(.state) | unique | join(","))"' \
        "$T/status-samples-tandem.txt")$'\n'
fi
LAG_LINES+=$(awk -F'|' 'NF == 4 { n[$1]++; if ($2 > w[$1]) w[$1] = $2; if ($3 > f[$1]) f[$1] = $3; if ($4 > r[$1]) r[$1] = $4 }
    END { for (m in n) printf "pg_stat_replication %s: write_lag %.3f s, flush_lag %.3f s, replay_lag %.3f s, %d samples\n", m, w[m], f[m], r[m], n[m] }' \
    "$T/pglag-tandem.txt" | sort)
# shellcheck disable=SC2001
sed 's/^/    /' <<<"$LAG_LINES"

check "replicator still running after the suite" "$(kill -0 "$RELAY_PID" 2>/dev/null; echo $?)"

# ---------------------------------------------------------------------------
# 6. standbys vs primary
# ---------------------------------------------------------------------------
say "compare: primary vs s1 and s2 (compare_nodes.sh waits for replay)"
t=$SECONDS
set +e
"$HERE/compare_nodes.sh" --primary "$PP" --standby "$PS1" --standby "$PS2" --user postgres --wait-replay 300 \
    > "$T/compare.txt" 2>&1
C_RC=$?
set -e
C_SECS=$((SECONDS - t))
grep -vE '^  same ' "$T/compare.txt" | sed 's/^/    /'
check "compare_nodes.sh: primary, s1 and s2 IDENTICAL ($C_SECS s)" "$([[ $C_RC == 0 ]]; echo $?)"

EXPECT_MID="mid_run_role|10000|1000|50|pg_tblspc/"
for sb in s1:$PS1 s2:$PS2; do
    name=${sb%%:*}; port=${sb##*:}
    got=$(psql_at "$port" created_mid_run "SELECT
            (SELECT rolname FROM pg_roles WHERE rolname = 'mid_run_role') || '|' ||
            (SELECT count(*) FROM mid_t) || '|' || (SELECT count(*) FROM mid_ts_t) || '|' ||
            (SELECT count(*) FROM mid_t WHERE v LIKE 'updated %') || '|' ||
            (SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'mid_run_ts')" 2>&1 || true)
    oid=$(psql_at "$port" postgres "SELECT oid FROM pg_tablespace WHERE spcname = 'mid_run_ts'" 2>/dev/null || true)
    ok=1
    [[ "$got" == "${EXPECT_MID}${oid}" && -n "$oid" && -d "$T/$name/pg_tblspc/$oid" && ! -L "$T/$name/pg_tblspc/$oid" ]] && ok=0
    check "$name has created_mid_run (role|rows|rows in tablespace|updates|location = $got; own in-place dir $T/$name/pg_tblspc/$oid)" "$ok"
done

# ---------------------------------------------------------------------------
# 7. status, clean stop, summary
# ---------------------------------------------------------------------------
FINAL_STATUS=$(curl -fsS -m 5 "$STATUS_URL" 2>/dev/null || echo '{}')
say "relay /status at the end:"
jq . <<<"$FINAL_STATUS" | sed 's/^/    /'
echo "    lag per member:"
jq -r '[.relay, .standbys[]][] | "      \(.name): state \(.state), sync_state \(.sync_state), lag \(.lag_bytes) bytes, \(.lag_seconds) s"' \
    <<<"$FINAL_STATUS" 2>/dev/null || true
starts=$(jq -r '.receiver.starts // "?"' <<<"$FINAL_STATUS")
[[ "$starts" == 1 ]] || say "note: pg_receivewal was started $starts times (restarts: see $T/relay.log)"
if grep -qE ' (ERROR|WARN) ' "$T/relay.log"; then
    say "replicator log warnings/errors:"; grep -E ' (ERROR|WARN) ' "$T/relay.log" | tail -20 | sed 's/^/    /'
fi

say "stopping the replicator (SIGTERM)"
t=$SECONDS
stop_relay
ssn_after=$(psql_at "$PP" postgres "SHOW synchronous_standby_names")
check "clean stop in $((SECONDS - t)) s: relay left the quorum (synchronous_standby_names = $ssn_after)" \
    "$([[ "$ssn_after" == 'ANY 1 ("s1", "s2")' ]]; echo $?)"
# and the primary does not wait on anyone gone: a commit returns promptly
t=$SECONDS
rc=0
timeout 20 "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PP" -U postgres -d created_mid_run \
    -c "INSERT INTO mid_t (id, v) VALUES (-1, 'after relay stop')" </dev/null >/dev/null 2>&1 || rc=$?
check "a commit after the relay stopped returns promptly ($((SECONDS - t)) s)" "$rc"

echo
echo "================ run_physical summary ================"
[[ $BASELINE == 1 ]] && echo "without Tandem : $B_PASSED of $B_TOTAL tests passed in $B_SECS s (run_regress exit $B_RC)"
echo "with Tandem    : ${T_PASSED:-?} of ${T_TOTAL:-?} tests passed in $T_SECS s (run_regress exit $T_RC); physical sync, ANY 1 (s1, s2, tandem_relay)"
echo "failed tests   : ${T_FAILED:-none}"
echo "SyncRep        : $SR_KEYS commits seen waiting for the quorum, longest ${SR_MAX} s"
echo "mid-run        : $(grep -E '^(ok|FAILED) ' "$mid" | awk '{printf "%s %s %ss; ", $2, $1, $3}')"
echo "compare        : $(tail -1 "$T/compare.txt") (exit $C_RC, $C_SECS s)"
echo "max lag during the suite (Tandem /status; PostgreSQL pg_stat_replication, whose replay_lag means nothing for the relay: pg_receivewal replays nothing):"
# shellcheck disable=SC2001
sed 's/^/    /' <<<"$LAG_LINES"
echo "final lag      : $(jq -r '[.relay, .standbys[]] | map("\(.name) \(.lag_bytes) B/\(.lag_seconds) s") | join(", ")' <<<"$FINAL_STATUS" 2>/dev/null)"
echo "total          : $((SECONDS - T0)) s"
if [[ ${#FAILS[@]} -eq 0 ]]; then
    echo "run_physical: PASS (all checks hold)"
    exit 0
fi
echo "run_physical: FAIL (${#FAILS[@]} checks failed):"
printf '  - %s\n' "${FAILS[@]}"
exit 1
