#!/usr/bin/env bash
# Replicator benchmark: apply throughput, replication lag and primary TPS under pgbench TPC-B
# on the primary, for Tandem async, Tandem sync and PostgreSQL's native logical replication
# (CREATE PUBLICATION / CREATE SUBSCRIPTION); writes bench/results/replicator-<date>.md.
#
# One PostgreSQL 15 primary (wal_level = logical) lives through the whole run; each system
# gets a fresh, empty replica server with the same settings, one after the other:
#   baseline      pgbench on the primary with nothing attached
#   tandem-async  `tandem replicator --mode async`  (initial copy, then the change stream)
#   tandem-sync   `tandem replicator --mode sync`   (the primary waits for the replica's apply)
#   native        pg_dump --schema-only + CREATE SUBSCRIPTION (copy_data on)
# For each: (1) live: pgbench -M prepared -c $CLIENTS -T $DURATION on the primary while a
# sampler reads the replica's progress once a second; lag is measured the same way for all
# three: pgbench_history rows (one per TPC-B transaction) on the primary minus on the replica,
# and the age of the newest applied row (clock_timestamp() - max(mtime)); then the time to
# catch up after the load stops. (2) backlog (async and native only): apply paused, the same
# load on the primary, apply resumed; the backlog's size over the time to drain it is the
# apply throughput with the whole machine to itself.
#
# Usage: bench/replicator.sh       (as root; see bench/README.md)
# Knobs: DURATION=30 BACKLOG_DURATION=20 CLIENTS=8 THREADS=2 SCALE=10 PROFILE=1
#   SYSTEMS="tandem-async tandem-sync native" MAX_LOAD=2.5 LOAD_WAIT=300 SKIP_BUILD=0
#   KEEP_WORK=0 OUT=<file> TANDEM_GLOBAL_ARGS="--threads 1" (flags before the subcommand)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-30}
BACKLOG_DURATION=${BACKLOG_DURATION:-20}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
PROFILE=${PROFILE:-1}
MAX_LOAD=${MAX_LOAD:-2.5}
LOAD_WAIT=${LOAD_WAIT:-300}
CATCHUP_LIMIT=${CATCHUP_LIMIT:-600}
SYSTEMS=(${SYSTEMS:-tandem-async tandem-sync native})
OUT=${OUT:-$BENCH_DIR/results/replicator-$(date +%Y-%m-%d).md}
DB=bench

bench_init repl
build_tandem
"$TANDEM_BIN" replicator --help >/dev/null 2>&1 || die "this build has no 'tandem replicator' command yet"
MACHINE=$(machine_info)

# --- primary -----------------------------------------------------------------------------
P_PORT=$(free_port)
pg_start_replicating primary "$P_PORT" logical
as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$P_PORT" -U postgres "$DB"
log "pgbench -i -s $SCALE on the primary (127.0.0.1:$P_PORT)"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$P_PORT" -U postgres "$DB" >"$WORK/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed"
psqlp() { psql -X -qAt -h 127.0.0.1 -p "$P_PORT" -U postgres -d "$DB" "$@"; }
psqlr() { psql -X -qAt -h 127.0.0.1 -p "$R_PORT" -U postgres -d "$DB" "$@"; }
# A table only for "is the replica there yet" markers; replicated like every other.
psqlp -c 'CREATE TABLE bench_marker (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())'
psqlp -c 'VACUUM ANALYZE' >/dev/null
PGBENCH="pgbench -n -M prepared -c $CLIENTS -j $THREADS"

# reset_primary: what pgbench does before a run (without -n), then a checkpoint.
reset_primary() {
    psqlp -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'TRUNCATE pgbench_history' \
        -c 'CHECKPOINT' >/dev/null
}

# pgbench_tps LOG: the tps number of a pgbench output.
pgbench_tps() { awk '/^tps = / {print $3; exit}' "$1"; }

# wait_marker ID SECONDS: insert marker ID on the primary and wait until the replica has it.
wait_marker() {
    local id=$1 limit=$2 i
    psqlp -c "INSERT INTO bench_marker (id) VALUES ($id)"
    for ((i = 0; i < limit * 5; i++)); do
        [[ "$(psqlr -c "SELECT count(*) FROM bench_marker WHERE id = $id" 2>/dev/null)" == 1 ]] && return 0
        sleep 0.2
    done
    return 1
}

# wait_caught_up SECONDS: until the replica has as many pgbench_history rows as the primary
# (equal, not at least: after a TRUNCATE the replica may still hold more);
# prints the seconds it took (or "timeout").
wait_caught_up() { # LIMIT [SAMPLES_FILE: "seconds<TAB>replica rows" every poll]
    local limit=$1 samples=${2:-/dev/null} target start now have
    target=$(psqlp -c 'SELECT count(*) FROM pgbench_history')
    start=$(date +%s.%N)
    while :; do
        have=$(psqlr -c 'SELECT count(*) FROM pgbench_history' 2>/dev/null || echo 0)
        now=$(date +%s.%N)
        awk -v a="$start" -v b="$now" -v n="$have" 'BEGIN {printf "%.3f\t%s\n", b - a, n}' >>"$samples"
        if [[ $have -eq $target ]]; then
            awk -v a="$start" -v b="$now" 'BEGIN {printf "%.2f", b - a}'
            return 0
        fi
        if awk -v a="$start" -v b="$now" -v l="$limit" 'BEGIN {exit !(b - a > l)}'; then
            echo timeout
            return 0
        fi
        sleep 0.1
    done
}

# steady_rate SAMPLES BACKLOG: rows applied per second while the replica went from 20% to 80%
# of the backlog (times interpolated between polls): the apply rate itself, without the
# resume (process start-up for Tandem, worker start for native) and the tail.
steady_rate() {
    awk -v n="$2" -F'\t' '
        { t[NR] = $1; r[NR] = $2 }
        END {
            lo = 0.2 * n; hi = 0.8 * n
            for (i = 2; i <= NR; i++) {
                if (!t20 && r[i] >= lo) t20 = t[i-1] + (t[i] - t[i-1]) * (lo - r[i-1]) / (r[i] - r[i-1] + 1e-9)
                if (!t80 && r[i] >= hi) t80 = t[i-1] + (t[i] - t[i-1]) * (hi - r[i-1]) / (r[i] - r[i-1] + 1e-9)
            }
            if (t20 && t80 && t80 > t20) printf "%.0f", (hi - lo) / (t80 - t20); else printf "—"
        }' "$1"
}

# sampler OUTFILE: once a second, primary rows, replica rows, age of the replica's newest row.
sampler() {
    local out=$1 t0 p r age
    t0=$(date +%s.%N)
    printf 't\tprimary_rows\treplica_rows\tlag_rows\tlag_seconds\n' >"$out"
    while :; do
        # Replica first, then primary: the primary's count is a little newer, so the lag read
        # is never below the true lag.
        r=$(psqlr -c "SELECT count(*) || ' ' || coalesce(extract(epoch FROM clock_timestamp() - max(mtime))::numeric(10,3)::text, '') FROM pgbench_history" 2>/dev/null || echo "")
        p=$(psqlp -c 'SELECT count(*) FROM pgbench_history' 2>/dev/null || echo "")
        age=${r#* }
        r=${r%% *}
        if [[ -n $p && -n $r ]]; then
            printf '%s\t%s\t%s\t%s\t%s\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" \
                "$p" "$r" $((p - r)) "$age" >>"$out"
        fi
        sleep 1
    done
}

# pid_ticks PID...: summed user+system CPU ticks of live processes.
pid_ticks() {
    local sum=0 pid t
    for pid in "$@"; do
        t=$(cpu_ticks "$pid" 2>/dev/null || echo 0)
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# --- systems -----------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
printf 'system\tprimary_tps\tapply_tps_live\tlag_rows_median\tlag_rows_max\tlag_rows_end\tlag_s_median\tlag_s_max\tlag_trend\tcatchup_s\tbacklog_txns\tdrain_s\tdrain_tps\tsteady_tps\tcpu\n' >"$RESULTS"
COMMANDS=()
LOADS=()
PROFILE_MD="(profile skipped)"
TICKS=$(getconf CLK_TCK)

TANDEM_PID=""
MARKER=0
start_tandem() { # MODE
    local mode=$1
    TANDEM_STATUS_PORT=$(free_port)
    local cmd=("$TANDEM_BIN" --log info ${TANDEM_GLOBAL_ARGS:-} replicator --primary "postgres://postgres@127.0.0.1:$P_PORT/$DB"
        --replica "r1=postgres://postgres@127.0.0.1:$R_PORT/$DB" --database "$DB" --mode "$mode"
        --data-dir "$WORK/changelog-$mode" --status-listen "127.0.0.1:$TANDEM_STATUS_PORT")
    local shown="tandem-$mode: ${cmd[*]/#$TANDEM_BIN/tandem}"
    [[ " ${COMMANDS[*]} " == *"$shown"* ]] || COMMANDS+=("$shown")
    spawn "$WORK/tandem-$mode.log" "${cmd[@]}"
    TANDEM_PID=$SPAWNED_PID
}
stop_tandem() {
    [[ -n $TANDEM_PID ]] || return 0
    kill -TERM "$TANDEM_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$TANDEM_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$TANDEM_PID" 2>/dev/null || true
    wait "$TANDEM_PID" 2>/dev/null || true
    TANDEM_PID=""
}

# attach SYSTEM: make the fresh replica follow the primary.
attach() {
    case $1 in
        tandem-async) start_tandem async ;;
        tandem-sync) start_tandem sync ;;
        native)
            "$PG_BIN/pg_dump" --schema-only -h 127.0.0.1 -p "$P_PORT" -U postgres "$DB" >"$WORK/schema.sql"
            psqlr -v ON_ERROR_STOP=1 -f "$WORK/schema.sql" >/dev/null
            psqlp -c 'CREATE PUBLICATION bench_pub FOR ALL TABLES'
            psqlr -c "CREATE SUBSCRIPTION bench_sub CONNECTION 'host=127.0.0.1 port=$P_PORT user=postgres dbname=$DB application_name=bench_sub' PUBLICATION bench_pub"
            COMMANDS+=("native: pg_dump --schema-only | psql replica; CREATE PUBLICATION bench_pub FOR ALL TABLES; CREATE SUBSCRIPTION bench_sub CONNECTION '...' PUBLICATION bench_pub")
            ;;
    esac
}
# detach SYSTEM: undo attach, leaving the primary as it was.
detach() {
    case $1 in
        tandem-*)
            # Release the primary from waiting on the replicator before stopping it (sync mode).
            psqlp -c 'ALTER SYSTEM RESET synchronous_standby_names' -c 'SELECT pg_reload_conf()' >/dev/null
            sleep 1
            stop_tandem
            psqlp -c 'DROP EVENT TRIGGER IF EXISTS tandem_ddl' -c 'DROP EVENT TRIGGER IF EXISTS tandem_ddl_start' \
                -c 'DROP EVENT TRIGGER IF EXISTS tandem_ddl_drop' -c 'DROP SCHEMA IF EXISTS tandem CASCADE' >/dev/null 2>&1 || true
            psqlp -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null || true
            psqlp -c "DO \$\$ DECLARE p text; BEGIN FOR p IN SELECT pubname FROM pg_publication LOOP EXECUTE format('DROP PUBLICATION %I', p); END LOOP; END \$\$" >/dev/null || true
            ;;
        native)
            psqlr -c 'DROP SUBSCRIPTION bench_sub' >/dev/null || true
            psqlp -c 'DROP PUBLICATION IF EXISTS bench_pub' >/dev/null || true
            ;;
    esac
}
# pause_apply / resume_apply SYSTEM (async and native only).
pause_apply() {
    case $1 in
        tandem-async) stop_tandem ;;
        native) psqlr -c 'ALTER SUBSCRIPTION bench_sub DISABLE' ;;
    esac
}
resume_apply() {
    case $1 in
        tandem-async) start_tandem async ;;
        native) psqlr -c 'ALTER SUBSCRIPTION bench_sub ENABLE' ;;
    esac
}
# apply_pids SYSTEM: processes doing the replication work (for CPU accounting).
apply_pids() {
    local pids
    pids=$(psqlp -c "SELECT pid FROM pg_stat_replication" 2>/dev/null | paste -sd' ')
    case $1 in
        tandem-*) pids="$pids $TANDEM_PID $(psqlr -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'tandem%'" | paste -sd' ')" ;;
        native) pids="$pids $(psqlr -c "SELECT pid FROM pg_stat_subscription WHERE pid IS NOT NULL" | paste -sd' ')" ;;
    esac
    echo "$pids"
}

# summarize_samples FILE: median/max lag rows, median/max lag seconds, trend of lag rows
# (mean of the last third minus the first third; near 0 = not growing).
summarize_samples() {
    python3 - "$1" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rows = [r for r in rows if int(r["primary_rows"]) > 0]
if not rows:
    print("\t".join(["—"] * 6)); sys.exit()
lag = [int(r["lag_rows"]) for r in rows]
secs = [float(r["lag_seconds"]) for r in rows if r["lag_seconds"]]
third = max(1, len(lag) // 3)
trend = statistics.mean(lag[-third:]) - statistics.mean(lag[:third])
f = lambda v: f"{v:.0f}"
print("\t".join([f(statistics.median(lag)), f(max(lag)), f"{statistics.median(secs):.2f}" if secs else "—",
                 f"{max(secs):.2f}" if secs else "—", f"{trend:+.0f}", str(lag[-1])]))
EOF
}

measure_system() { # SYSTEM
    local sys=$1
    wait_low_load "$MAX_LOAD" "$LOAD_WAIT"
    LOADS+=("$sys: $(uptime | sed 's/^ *//')")
    log "== $sys ($(uptime | sed 's/.*load/load/'))"
    R_PORT=$(free_port)
    pg_create "replica-$sys" "$R_PORT"
    pg_start "replica-$sys"
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$R_PORT" -U postgres "$DB"
    reset_primary
    local t0 t1
    t0=$(date +%s)
    attach "$sys"
    MARKER=$((MARKER + 1))
    wait_marker "$MARKER" "$CATCHUP_LIMIT" || die "$sys: the replica did not get the initial copy in time (see $WORK)"
    t1=$(date +%s)
    log "$sys: replica in step after $((t1 - t0))s (initial copy of scale $SCALE)"

    # (1) live
    local samples="$WORK/samples-$sys.tsv" spid pids ticks0 ticks1 tps catchup apply_live
    sampler "$samples" &
    spid=$!
    BENCH_PIDS+=("$spid")
    pids=$(apply_pids "$sys")
    ticks0=$(pid_ticks $pids)
    $PGBENCH -T "$DURATION" -h 127.0.0.1 -p "$P_PORT" -U postgres "$DB" >"$WORK/live-$sys.log" 2>&1 \
        || log "$sys: pgbench exited non-zero: $(tail -1 "$WORK/live-$sys.log")"
    local at_end
    at_end=$(psqlr -c 'SELECT count(*) FROM pgbench_history')
    ticks1=$(pid_ticks $pids)
    catchup=$(wait_caught_up "$CATCHUP_LIMIT")
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    tps=$(pgbench_tps "$WORK/live-$sys.log")
    apply_live=$(awk -v n="$at_end" -v d="$DURATION" 'BEGIN {printf "%.0f", n / d}')
    local cpu
    cpu=$(awk -v d=$((ticks1 - ticks0)) -v hz="$TICKS" -v s="$DURATION" 'BEGIN {printf "%.0f%% of one core", d / hz / s * 100}')
    local stats
    stats=$(summarize_samples "$samples")
    local lag_med lag_max lag_s_med lag_s_max trend lag_end
    IFS=$'\t' read -r lag_med lag_max lag_s_med lag_s_max trend lag_end <<<"$stats"
    log "$sys: primary ${tps} TPS, replica applied ${apply_live}/s live, lag median ${lag_med} rows (${lag_s_med}s), trend ${trend}, caught up ${catchup}s after"

    # (2) backlog
    local backlog="—" drain="—" drain_tps="—" steady_tps="—"
    if [[ $sys != tandem-sync ]]; then
        # Empty the history on both sides first, so the count after resuming is the backlog alone.
        reset_primary
        [[ $(wait_caught_up 120) != timeout ]] || log "$sys: replica did not apply the TRUNCATE in time"
        pause_apply "$sys"
        $PGBENCH -T "$BACKLOG_DURATION" -h 127.0.0.1 -p "$P_PORT" -U postgres "$DB" >"$WORK/backlog-$sys.log" 2>&1 || true
        backlog=$(psqlp -c 'SELECT count(*) FROM pgbench_history')
        local perf_pid=""
        resume_apply "$sys"
        if [[ $PROFILE == 1 && $sys == tandem-async ]] && perf stat -e cpu-clock true >/dev/null 2>&1; then
            perf record -q -F 400 -e cpu-clock --call-graph dwarf,16384 -o "$WORK/perf.data" -p "$TANDEM_PID" \
                >"$WORK/perf-record.log" 2>&1 &
            perf_pid=$!
            BENCH_PIDS+=("$perf_pid")
        fi
        drain=$(wait_caught_up "$CATCHUP_LIMIT" "$WORK/drain-$sys.tsv")
        if [[ -n $perf_pid ]]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            profile_report
        fi
        [[ $drain != timeout ]] && drain_tps=$(awk -v n="$backlog" -v s="$drain" 'BEGIN {printf "%.0f", n / s}')
        steady_tps=$(steady_rate "$WORK/drain-$sys.tsv" "$backlog")
        log "$sys: backlog of $backlog transactions drained in ${drain}s (${drain_tps}/s; ${steady_tps}/s from 20% to 80%)"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$tps" "$apply_live" "$lag_med" "$lag_max" \
        "$lag_end" "$lag_s_med" "$lag_s_max" "$trend" "$catchup" "$backlog" "$drain" "$drain_tps" "$steady_tps" "$cpu" >>"$RESULTS"
    cp "$samples" "$WORK/keep-samples-$sys.tsv"
    detach "$sys"
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/replica-$sys" stop -m immediate >/dev/null 2>&1 || true
}

profile_report() {
    local pd="$WORK/perf.data"
    PROFILE_MD=$(
        echo "\`perf record -F 400 -e cpu-clock --call-graph dwarf -p <tandem replicator pid>\` while it drained the backlog."
        echo
        echo "By shared object (self time):"
        echo
        echo '```'
        perf report -i "$pd" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | sed 's/ *$//' | head -8
        echo '```'
        echo
        echo "Hottest functions, self time (inlined frames folded into their caller):"
        echo
        echo '```'
        perf report -i "$pd" --no-children --no-inline -g none --sort dso,symbol --stdio --percent-limit 0.7 2>/dev/null \
            | grep -E '^ +[0-9]' | cut -c1-150 | sed 's/ *$//' | head -35
        echo '```'
        echo
        echo "Inclusive time of replicator functions (children), 2% or more:"
        echo
        echo '```'
        perf report -i "$pd" --children --no-inline -g none --sort symbol --stdio --percent-limit 2 2>/dev/null \
            | grep -E '^ +[0-9]' | grep -E 'tandem_|tokio_postgres|postgres_protocol|fsync|fdatasync|sync_file' \
            | cut -c1-170 | sed 's/ *$//' | head -40
        echo '```'
    )
}

# baseline: nothing attached
wait_low_load "$MAX_LOAD" "$LOAD_WAIT"
LOADS+=("baseline: $(uptime | sed 's/^ *//')")
reset_primary
log "== baseline (nothing attached)"
$PGBENCH -T "$DURATION" -h 127.0.0.1 -p "$P_PORT" -U postgres "$DB" >"$WORK/baseline.log" 2>&1 || die "baseline pgbench failed"
BASE_TPS=$(pgbench_tps "$WORK/baseline.log")
log "baseline: $BASE_TPS TPS"
COMMANDS+=("load: $PGBENCH -T $DURATION -h 127.0.0.1 -p PRIMARY -U postgres $DB (backlog phase: -T $BACKLOG_DURATION)")

for sys in "${SYSTEMS[@]}"; do
    measure_system "$sys"
done

# --- results -------------------------------------------------------------------------------
results_path
TABLES=$(python3 - "$RESULTS" "$BASE_TPS" "$DURATION" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
base = float(sys.argv[2])
def num(v):
    try: return float(v)
    except (TypeError, ValueError): return None
def ratio(a, b):
    a, b = num(a), num(b)
    return f"{a / b:.2f}x" if a is not None and b else "—"
native = next((r for r in rows if r["system"] == "native"), None)
print("| system | primary TPS | primary TPS / baseline | applied per s during load | lag rows: median / max / at end | lag trend (rows, last third − first third) | newest-row age s: median / max | catch-up after load s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
print(f"| nothing attached (baseline) | {base:,.0f} | 1.00x | — | — | — | — | — |")
for r in rows:
    tps = num(r["primary_tps"])
    print(f"| {r['system']} | {tps:,.0f} | {ratio(tps, base)} | {r['apply_tps_live']} | {r['lag_rows_median']} / {r['lag_rows_max']} / {r['lag_rows_end']} "
          f"| {r['lag_trend']} | {r['lag_s_median']} / {r['lag_s_max']} | {r['catchup_s']} |")
print()
print("Apply throughput on a backlog (apply paused, the same load run on the primary, apply resumed):")
print()
print("| system | backlog (transactions) | drained in s | applied per s | vs native | steady rate (20% → 80% of backlog) per s | vs native | replication CPU during live load |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    vs = ratio(r["drain_tps"], native["drain_tps"]) if native else "—"
    vs_steady = ratio(r["steady_tps"], native["steady_tps"]) if native else "—"
    print(f"| {r['system']} | {r['backlog_txns']} | {r['drain_s']} | {r['drain_tps']} | {vs} | {r['steady_tps']} | {vs_steady} | {r['cpu']} |")
EOF
)
{
    echo "# Replicator benchmark: Tandem async / sync vs native logical replication"
    echo
    echo "Written by \`bench/replicator.sh\`. pgbench TPC-B \`-M prepared -c $CLIENTS -j $THREADS -T $DURATION\`"
    echo "on the primary (scale $SCALE); one fresh replica server per system, the same settings on"
    echo "every server. Everything shares $(nproc) cores: pgbench, primary, replica, and the replicator."
    echo
    echo "## Machine"
    echo
    echo "$MACHINE"
    echo
    echo "## Results"
    echo
    echo "$TABLES"
    echo
    echo "- Lag is measured identically for the three systems: \`count(*)\` of \`pgbench_history\` (one"
    echo "  row per TPC-B transaction) on the primary minus on the replica, sampled every second, and"
    echo "  the age of the newest row on the replica (\`clock_timestamp() - max(mtime)\`)."
    echo "- \"applied per s during load\" = rows on the replica when pgbench stopped / duration; equal to"
    echo "  the primary's TPS when the replica keeps up."
    echo "- \"replication CPU\" = user+system CPU of the walsender(s) on the primary, plus the Tandem"
    echo "  process and its apply sessions on the replica (Tandem) or the apply worker (native)."
    echo "- Load average before each phase:"
    for l in "${LOADS[@]}"; do echo "  - $l"; done
    echo
    echo "## Where Tandem's time goes (async, draining the backlog)"
    echo
    echo "$PROFILE_MD"
    echo
    echo "## Setup and exact commands"
    echo
    echo "- PostgreSQL settings (primary and every replica): $(grep -A20 '^# --- tandem bench' "$WORK/primary/postgresql.conf" | grep -v '^#' | grep . | grep -v -E '^port|unix_socket' | sed 's/ *= */=/' | paste -sd, | sed 's/,/, /g'); everything else default."
    echo
    echo '```'
    for c in "${COMMANDS[@]}"; do echo "$c"; done
    echo '```'
} >"$OUT"
log "wrote $OUT"
