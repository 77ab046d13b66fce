#!/usr/bin/env bash
# Switchover benchmark: the planned switchover's write pause under load, through the proxy;
# writes bench/results/switchover-<date>-<HHMM>.md.
#
# One Tandem HA cluster (bench/ha_cluster.sh: pg1 + s1 + s2, the WAL relay in sync mode, three
# witnesses, the proxy, and a `tandem agent` beside each node). pgbench TPC-B `-M prepared -c
# $CLIENTS -j $THREADS -T <long enough>` through the proxy with a per-transaction log (`-l`),
# plus the writer (bench/failover_writer.py) inserting unique ids through the proxy. While
# they run, $SWITCHOVERS times `tandem switchover --to NODE --yes`, each after $STEADY s of
# steady load once the previous one is done and the old primary streams again as a standby.
# Targets: TARGETS=rotate (pg1 → s1 → s2 → pg1 …) or alternate (pg1 → s1 → pg1 …).
# Afterwards bench/switchover_report.py reads everything:
#   - per switchover: the CLI's phases and "Write pause", the group's history entry (each
#     phase's duration; total = the write pause as the group sees it), the proxy's own
#     paused_ms, and from pgbench's log the write pause as clients see it (the longest
#     transaction ending between the pause and 2 s after the publication), the p99 within ±1 s
#     of the pause, and the longest time no transaction completed;
#   - overall: pgbench's failed transactions (must be 0), its exit status and aborted clients,
#     TPS and latency in the steady state (away from the switchovers) against overall;
#   - lost writes: every id the writer had acknowledged must be on the final primary, and every
#     node must end with the same pgbench tables (counts, sums; TPC-B's four sums equal).
#
# Usage: bench/switchover.sh          (as root; see bench/README.md)
# Knobs: SWITCHOVERS=10 TARGETS=rotate SCALE=16 CLIENTS=16 THREADS=2 PROTOCOL=prepared WARMUP=10
#   STEADY=10 TAIL=10 SWITCH_EST=4 SWITCH_LIMIT=60 PAUSE_TIMEOUT_MS=3000 WRITERS=2
#   WITNESS_ARGS= PROXY_ARGS= RELAY_ARGS= TANDEM_BIN=<binary; default: cargo build --release>
#   SKIP_BUILD=0 KEEP_WORK=0 LOGDIR=<where the raw data is kept> OUT=<file>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# The knobs as given, before any is made an array (arrays are not exported).
INVOCATION="$(env | grep -E '^(SWITCHOVERS|TARGETS|SCALE|CLIENTS|THREADS|PROTOCOL|WARMUP|STEADY|TAIL|SWITCH_EST|SWITCH_LIMIT|PAUSE_TIMEOUT_MS|WRITERS|WITNESS_ARGS|PROXY_ARGS|RELAY_ARGS|TANDEM_BIN|SKIP_BUILD)=' | sort | paste -sd' ') bench/switchover.sh"
INVOCATION=${INVOCATION# }
source "$(dirname "$0")/ha_cluster.sh"

SWITCHOVERS=${SWITCHOVERS:-10}
TARGETS=${TARGETS:-rotate}
SCALE=${SCALE:-16}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
PROTOCOL=${PROTOCOL:-prepared}
WARMUP=${WARMUP:-10}
STEADY=${STEADY:-10}
TAIL=${TAIL:-10}
SWITCH_EST=${SWITCH_EST:-4}
SWITCH_LIMIT=${SWITCH_LIMIT:-60}
PAUSE_TIMEOUT_MS=${PAUSE_TIMEOUT_MS:-3000}
WRITERS=${WRITERS:-2}
MODE=sync
STAMP=$(date +%Y-%m-%d-%H%M)
OUT=${OUT:-$BENCH_DIR/results/switchover-$STAMP.md}
LOGDIR=${LOGDIR:-/tmp/tandem-bench-switchover-$STAMP}
[[ $TARGETS == rotate || $TARGETS == alternate ]] || die "TARGETS must be rotate or alternate"
((SWITCHOVERS >= 1)) || die "SWITCHOVERS must be at least 1"
# pgbench runs long enough for every switchover at the estimated pace; a slower run does fewer
# (and says so), a faster one has a longer steady tail.
DURATION=$((WARMUP + SWITCHOVERS * (SWITCH_EST + STEADY) + TAIL))

python3 -c 'import psycopg' 2>/dev/null || die "the writer needs psycopg 3: python3 -m pip install 'psycopg[binary]'"
for tool in curl jq pgbench psql; do command -v "$tool" >/dev/null || die "$tool is needed"; done
UPTIME_START=$(uptime | sed 's/^ *//')
bench_init switchover
ha_binary
MACHINE=$(machine_info)
mkdir -p "$LOGDIR"
D=$LOGDIR
C="$WORK/cluster"
mkdir -p "$C"
chown "$PG_USER": "$C"

ha_template "$SCALE"
log "starting the cluster (sync mode, agents)"
HA_AGENTS=1
ha_start "$C" "$MODE" || die "cluster setup failed: $HA_REASON (logs in $C; KEEP_WORK=1 keeps them)"

# next_target K PRIMARY: the target of switchover K.
next_target() {
    local k=$1 primary=$2
    if [[ $TARGETS == alternate ]]; then
        [[ $primary == pg1 ]] && echo s1 || echo pg1
    else
        case $primary in pg1) echo s1 ;; s1) echo s2 ;; *) echo pg1 ;; esac
    fi
}

# wait_ready TARGET SECONDS: no operation in progress, TARGET marked a standby by the group and
# streaming from the current primary.
wait_ready() {
    local target=$1 limit=$2 i state primary
    for ((i = 0; i < limit * 5; i++)); do
        state=$(ha_state || true)
        primary=$(jq -r '.primary // empty' <<<"$state" 2>/dev/null || true)
        if [[ -n $primary ]] && jq -e --arg t "$target" '.operation == null and .nodes[$t].role == "standby"' >/dev/null 2>&1 <<<"$state" \
            && [[ $(sql "$(ha_port "$primary")" "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$target' AND state = 'streaming'" 2>/dev/null) == 1 ]]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# --- the load ---------------------------------------------------------------------------------
cp "$BENCH_DIR/failover_writer.py" "$WORK/writer.py"
DSN="host=127.0.0.1 port=$HA_PROXY_PORT user=postgres dbname=postgres connect_timeout=2"
PGBENCH=(pgbench -n -M "$PROTOCOL" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -l --log-prefix="$D/pgbench_log"
    -h 127.0.0.1 -p "$HA_PROXY_PORT" -U postgres postgres)
log "load: ${PGBENCH[*]} (${DURATION}s) + the writer ($WRITERS sessions)"
python3 "$WORK/writer.py" "$DSN" "$D/writer.tsv" "$WRITERS" 2>"$D/writer.err" &
WRITER_PID=$!
BENCH_PIDS+=("$WRITER_PID")
PGBENCH_START=$EPOCHREALTIME
(cd "$D" && exec "${PGBENCH[@]}") >"$D/pgbench.out" 2>&1 &
PGBENCH_PID=$!
BENCH_PIDS+=("$PGBENCH_PID")
PGBENCH_END=$(awk -v s="$PGBENCH_START" -v d="$DURATION" 'BEGIN {printf "%.3f", s + d}')
python3 "$BENCH_DIR/cpu_split.py" start "$D/cpu-before-1.json"
sleep "$WARMUP"

# --- the switchovers --------------------------------------------------------------------------
printf 'k\tfrom\tto\tstart\tend\trc\tload1\tready_s\tquorum\tothers_before\tbusy_during\n' >"$D/switchovers.tsv"
DONE=0
STOPPED_EARLY=""
primary=pg1
for ((k = 1; k <= SWITCHOVERS; k++)); do
    to=$(next_target "$k" "$primary")
    t0=$EPOCHREALTIME
    if ! wait_ready "$to" "$SWITCH_LIMIT"; then
        STOPPED_EARLY="$to was not a streaming standby within ${SWITCH_LIMIT}s before switchover $k"
        log "$STOPPED_EARLY"
        break
    fi
    ready_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
    left=$(awk -v e="$PGBENCH_END" -v n="$EPOCHREALTIME" 'BEGIN {printf "%d", e - n}')
    if ((left < SWITCH_EST + 3)); then
        STOPPED_EARLY="pgbench had ${left}s left before switchover $k (SWITCH_EST=$SWITCH_EST is too small for this machine)"
        log "$STOPPED_EARLY"
        break
    fi
    load=$(load1)
    # How much of the machine other work took in the steady load before (this run's processes:
    # the script's descendants and the servers, which the agents start outside it), and how
    # busy the machine was during the switchover.
    others=$(python3 "$BENCH_DIR/cpu_split.py" end "$D/cpu-before-$k.json" $$ \
        $(head -qn1 "$C"/{pg1,s1,s2}/postmaster.pid 2>/dev/null) | awk '{print $2}' || echo '')
    bs0=$(busy_steal)
    log "switchover $k: $primary → $to (load $load)"
    rc=0
    start=$EPOCHREALTIME
    timeout "$SWITCH_LIMIT" "$TANDEM_BIN" switchover --to "$to" --yes --pause-timeout-ms "$PAUSE_TIMEOUT_MS" \
        "${HA_WITNESS_IDS[@]}" >"$D/switch-$k.out" 2>&1 || rc=$?
    end=$EPOCHREALTIME
    busy=$(awk -v a="$(busy_steal)" -v b="$bs0" -v t0="$start" -v t1="$end" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); printf "%.0f", (x[1] - y[1]) / ((t1 - t0) * hz * n) * 100 }')
    ha_state >"$D/state-$k.json" || true
    new=$(jq -r '.primary // empty' "$D/state-$k.json" 2>/dev/null || true)
    # The primary's commit quorum afterwards (whom its commits wait for until the next one).
    quorum=$(sql "$(ha_port "${new:-$primary}")" 'SHOW synchronous_standby_names' 2>/dev/null || echo '?')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$primary" "$to" "$start" "$end" "$rc" "$load" "$ready_s" "$quorum" \
        "$others" "$busy" >>"$D/switchovers.tsv"
    DONE=$k
    log "switchover $k: rc $rc, $(grep -h -E '^(Write pause|Done):' "$D/switch-$k.out" | paste -sd' ' || true); ${new:-?}'s synchronous_standby_names: $quorum"
    if ((rc != 0)) || [[ $new != "$to" ]]; then
        STOPPED_EARLY="switchover $k ($primary → $to) did not finish: exit status $rc, the group's primary is now ${new:-unknown}; see switch-$k.out"
        log "$STOPPED_EARLY"
        sed 's/^/    /' "$D/switch-$k.out" >&2
        break
    fi
    primary=$to
    python3 "$BENCH_DIR/cpu_split.py" start "$D/cpu-before-$((k + 1)).json"
    sleep "$STEADY"
done
UNTIL_END=$(awk -v e="$PGBENCH_END" -v n="$EPOCHREALTIME" 'BEGIN {printf "%d", e - n}')
log "$DONE switchovers done; pgbench ends in ${UNTIL_END}s"
PGBENCH_RC=0
wait "$PGBENCH_PID" || PGBENCH_RC=$?
echo "$PGBENCH_RC" >"$D/pgbench.rc"
kill -TERM "$WRITER_PID" 2>/dev/null || true
wait "$WRITER_PID" 2>/dev/null || true
log "pgbench exit status $PGBENCH_RC: $(grep -E 'number of (transactions actually processed|failed transactions)' "$D/pgbench.out" | paste -sd';' || true)"

# --- after the run: the final primary has every acknowledged id; every node the same tables -----
ha_state >"$D/state-final.json" || true
FINAL=$(jq -r '.primary // empty' "$D/state-final.json" 2>/dev/null || true)
[[ -n $FINAL ]] || FINAL=$primary
sql "$(ha_port "$FINAL")" 'SELECT id FROM failover_writes' >"$D/ids.txt" 2>"$D/ids.err" || log "could not read the ids on $FINAL"
CHECKSUM_SQL="SELECT (SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts) || ' ' ||
    (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' ||
    (SELECT count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history) || ' ' ||
    (SELECT count(*) || ' ' || coalesce(sum(id), 0) FROM failover_writes)"
WANT=$(sql "$(ha_port "$FINAL")" "$CHECKSUM_SQL" 2>/dev/null || true)
for ((i = 0; i < 300; i++)); do
    same=1
    for n in "${HA_NODES[@]}"; do
        [[ $(sql "$(ha_port "$n")" "$CHECKSUM_SQL" 2>/dev/null) == "$WANT" ]] || same=0
    done
    ((same)) && break
    sleep 0.2
done
: >"$D/checksums.tsv"
for n in "${HA_NODES[@]}"; do
    printf '%s\t%s\t%s\n' "$n" "$(sql "$(ha_port "$n")" 'SELECT pg_is_in_recovery()' 2>/dev/null || echo '?')" \
        "$(sql "$(ha_port "$n")" "$CHECKSUM_SQL" 2>/dev/null || echo unreachable)" >>"$D/checksums.tsv"
done
UPTIME_END=$(uptime | sed 's/^ *//')

# The processes' logs beside the data (the proxy's gives its own paused_ms per switchover).
for f in proxy.log relay.log w1.log w2.log w3.log agent-pg1.log agent-s1.log agent-s2.log pg1.log s1.log s2.log; do
    [[ -f $C/$f ]] && cp "$C/$f" "$D/$f"
done
ha_stop 0 0

# --- results ----------------------------------------------------------------------------------
printf '{"pgbench_start": %s, "duration": %s, "switchovers_asked": %s, "targets": "%s", "clients": %s, "stopped_early": %s, "final_primary": "%s"}\n' \
    "$PGBENCH_START" "$DURATION" "$SWITCHOVERS" "$TARGETS" "$CLIENTS" "$(jq -Rn --arg s "$STOPPED_EARLY" '$s')" "$FINAL" >"$D/meta.json"
results_path
REPORT=$(python3 "$BENCH_DIR/switchover_report.py" "$D") || REPORT="(the report could not be made: the raw data is in $D)"
{
    echo "# Switchover benchmark: the planned switchover's write pause under load, through the proxy"
    echo
    echo "Written by \`bench/switchover.sh\`. **One cluster on this one machine with $(nproc) cores**: primary pg1,"
    echo "standbys s1, s2 (\`tandem replica add\`), the WAL relay in the commit quorum (\`tandem replicator"
    echo "--replication physical --mode sync\`), a \`tandem agent\` beside each server, three witnesses and the"
    echo "proxy ($BIN_DESC, \`$BIN_VERSION\`), all with their default timings. Load through the proxy for"
    echo "${DURATION} s: pgbench TPC-B \`-M $PROTOCOL -c $CLIENTS -j $THREADS\` (scale $SCALE) with a per-transaction"
    echo "log (\`-l\`), and the writer (\`bench/failover_writer.py\`, $WRITERS sessions inserting unique ids one at a"
    echo "time). After $WARMUP s of load, $SWITCHOVERS × \`tandem switchover --to NODE --yes\` ($TARGETS: $( [[ $TARGETS == rotate ]] && echo "pg1 → s1 → s2 → pg1 …" || echo "pg1 → s1 → pg1 …")),"
    echo "each once the previous one is done, its old primary streams again as a standby, and $STEADY s of steady load passed."
    echo "Raw data (pgbench logs, each CLI's output, the group's state after each, the processes' logs):"
    echo "\`$D\` on the machine that ran it."
    echo
    ha_machine_section "- The machine is shared: other builds and tests may run during the benchmark; each switchover's
  one-minute load is in the table."
    echo
    echo "$REPORT"
    echo
    ha_setup_section
    echo "- The cluster is up when the relay reported its quorum to the group, s1, s2 and the relay stream, the"
    echo "  relay set \`synchronous_standby_names\`, and a write passed the proxy (as \`tests/src/ha.rs\`)."
    echo "- Commands (WORK = the temporary directory):"
    echo
    echo '```'
    printf '%s\n' "${HA_COMMANDS[@]}" | sed "s|$WORK|WORK|g"
    echo "load: ${PGBENCH[*]}" | sed "s|$D|LOGDIR|g"
    echo "writer: python3 bench/failover_writer.py '$DSN' LOGDIR/writer.tsv $WRITERS"
    echo "each switchover: tandem switchover --to NODE --yes --pause-timeout-ms $PAUSE_TIMEOUT_MS ${HA_WITNESS_IDS[*]}"
    echo '```'
} >"$OUT"
log "wrote $OUT"
python3 - "$D/summary.json" <<'EOF' >&2 || true
import json, sys
s = json.load(open(sys.argv[1]))
print("headline: " + s.get("headline", "?"))
EOF
