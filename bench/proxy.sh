#!/usr/bin/env bash
# Proxy benchmark: pgbench against direct PostgreSQL, the Tandem proxy and PgBouncer in
# one run, interleaved, on one primary; writes bench/results/proxy-<date>.md.
#
# Paths measured (all against the same PostgreSQL 15 primary, same settings):
#   direct     pgbench -> PostgreSQL
#   tandem     pgbench -> tandem proxy (transaction pooling, --no-read-split, trust) -> PostgreSQL
#   pgbouncer  pgbench -> PgBouncer (Debian package) -> PostgreSQL; transaction pooling for
#              simple-protocol workloads, session pooling for -M prepared (PgBouncer < 1.21
#              cannot keep prepared statements in transaction mode)
# Workloads (each -c $CLIENTS -j $THREADS -T $DURATION): -S -M simple, -S -M prepared,
# TPC-B -M prepared, -S -C. Then: proxy memory with $IDLE idle logged-in clients, and a
# perf profile of the proxy under -S -M simple.
#
# Usage: bench/proxy.sh            (as root; see bench/README.md)
# Knobs (environment): ROUNDS=10 DURATION=5 CLIENTS=16 THREADS=2 SCALE=10 POOL_SIZE=20
#   IDLE=2000 PROFILE=1 PGO=1 TANDEM_1W=0 MAX_LOAD=2.5 LOAD_WAIT=20 QUIET_STEAL=3 SKIP_BUILD=0
#   KEEP_WORK=0 OUT=<file>
# Many short runs rather than a few long ones: on a virtual machine the host's other guests
# take CPU time in bursts of tens of seconds (steal time), so the paths of one workload run
# back to back and each comparison is made within a round (see bench/README.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
IDLE=${IDLE:-2000}
PROFILE=${PROFILE:-1}
MAX_LOAD=${MAX_LOAD:-2.5}
LOAD_WAIT=${LOAD_WAIT:-20} # the bench's own load keeps the 1-minute average high between rounds
WORKLOADS=(${WORKLOADS:-select-simple select-prepared tpcb-prepared select-connect})
OUT=${OUT:-$BENCH_DIR/results/proxy-$(date +%Y-%m-%d).md}
DB=bench

bench_init proxy
ulimit -n 20000 2>/dev/null || true
build_tandem
# PGO=1: the measured Tandem is the profile-guided build (bench/pgo.sh), and the plain
# release build runs as a fourth path in the same rounds, so both numbers are in the table.
TANDEM_PLAIN_BIN=""
if [[ ${PGO:-1} == 1 ]]; then
    TANDEM_PLAIN_BIN=$TANDEM_BIN
    PGO_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/pgo/release/tandem"
    if [[ "${SKIP_BUILD:-0}" != 1 || ! -x $PGO_BIN ]]; then
        log "profile-guided build (bench/pgo.sh)"
        PGO_BIN=$("$BENCH_DIR/pgo.sh") || die "bench/pgo.sh failed"
    fi
    TANDEM_BIN=$PGO_BIN
fi
MACHINE=$(machine_info)

# --- servers -----------------------------------------------------------------------------
PG_PORT=$(free_port)
pg_create primary "$PG_PORT"
pg_start primary
log "PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB"
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB" >"$WORK/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed (see $WORK/pgbench-init.log)"
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$DB" -c 'VACUUM ANALYZE' >/dev/null

TANDEM_PORT=$(free_port)
TANDEM_CMD=("$TANDEM_BIN" --log info proxy --listen "127.0.0.1:$TANDEM_PORT"
    --primary "127.0.0.1:$PG_PORT" --no-read-split --pool-mode transaction --auth trust
    --control-user postgres --pool-size "$POOL_SIZE" --max-client-conn $((IDLE + 500)))
spawn "$WORK/tandem.log" env ${TANDEM_ENV:-} "${TANDEM_CMD[@]}"
TANDEM_PID=$SPAWNED_PID
wait_port "$TANDEM_PORT" 30 || die "tandem proxy did not listen (see $WORK/tandem.log)"
# Optional fourth path, in the same rounds: with PGO=1 the plain release build
# (`tandem-plain`); else, with TANDEM_1W=1, the same proxy with one worker thread
# (`--threads 1`), to show what the worker threads bring.
ALT_PATH="" ALT_PORT="" ALT_PID=""
if [[ -n $TANDEM_PLAIN_BIN || ${TANDEM_1W:-0} == 1 ]]; then
    ALT_PORT=$(free_port)
    ALT_CMD=("${TANDEM_CMD[@]}")
    ALT_CMD[5]="127.0.0.1:$ALT_PORT" # the --listen value
    if [[ -n $TANDEM_PLAIN_BIN ]]; then
        ALT_PATH=tandem-plain
        ALT_CMD[0]=$TANDEM_PLAIN_BIN
        spawn "$WORK/$ALT_PATH.log" env ${TANDEM_ENV:-} "${ALT_CMD[@]}"
    else
        ALT_PATH=tandem-1w
        spawn "$WORK/$ALT_PATH.log" env ${TANDEM_ENV:-} "${ALT_CMD[@]}" --threads 1
    fi
    ALT_PID=$SPAWNED_PID
    wait_port "$ALT_PORT" 30 || die "tandem proxy ($ALT_PATH) did not listen (see $WORK/$ALT_PATH.log)"
fi

echo '"postgres" ""' >"$WORK/userlist.txt"
# pgbouncer_ini NAME PORT MODE: a PgBouncer configuration for one instance.
pgbouncer_ini() {
    cat >"$WORK/$1.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = $3
default_pool_size = $POOL_SIZE
max_client_conn = $((IDLE + 500))
admin_users = postgres
EOF
    chown "$PG_USER": "$WORK/$1.ini" "$WORK/userlist.txt"
}
PGB_TX_PORT=$(free_port)
pgbouncer_ini pgbouncer-tx "$PGB_TX_PORT" transaction
spawn_as_pg "$WORK/pgbouncer-tx.out" /usr/sbin/pgbouncer "$WORK/pgbouncer-tx.ini"
PGB_TX_PID=$SPAWNED_PID
PGB_SESSION_PORT=$(free_port)
pgbouncer_ini pgbouncer-session "$PGB_SESSION_PORT" session
spawn_as_pg "$WORK/pgbouncer-session.out" /usr/sbin/pgbouncer "$WORK/pgbouncer-session.ini"
PGB_SESSION_PID=$SPAWNED_PID
wait_port "$PGB_TX_PORT" 30 || die "pgbouncer (transaction) did not listen"
wait_port "$PGB_SESSION_PORT" 30 || die "pgbouncer (session) did not listen"

for port in "$PG_PORT" "$TANDEM_PORT" $ALT_PORT "$PGB_TX_PORT" "$PGB_SESSION_PORT"; do
    psql -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d "$DB" -c 'SELECT 1' >/dev/null \
        || die "SELECT 1 through port $port failed"
done
log "tandem :$TANDEM_PORT (pid $TANDEM_PID), pgbouncer transaction :$PGB_TX_PORT, session :$PGB_SESSION_PORT"

# --- pgbench runs -----------------------------------------------------------------------
workload_flags() {
    case $1 in
        select-simple) echo "-S -M simple" ;;
        select-prepared) echo "-S -M prepared" ;;
        tpcb-prepared) echo "-M prepared" ;;
        select-connect) echo "-S -C" ;;
        *) die "unknown workload $1" ;;
    esac
}
# port_of WORKLOAD PATH, pid_of WORKLOAD PATH: where a path listens / which process to watch.
port_of() {
    case $2 in
        direct) echo "$PG_PORT" ;;
        tandem) echo "$TANDEM_PORT" ;;
        tandem-plain | tandem-1w) echo "$ALT_PORT" ;;
        pgbouncer) if [[ $1 == *prepared ]]; then echo "$PGB_SESSION_PORT"; else echo "$PGB_TX_PORT"; fi ;;
    esac
}
pid_of() {
    case $2 in
        direct) echo "" ;;
        tandem) echo "$TANDEM_PID" ;;
        tandem-plain | tandem-1w) echo "$ALT_PID" ;;
        pgbouncer) if [[ $1 == *prepared ]]; then echo "$PGB_SESSION_PID"; else echo "$PGB_TX_PID"; fi ;;
    esac
}

RAW="$WORK/runs.tsv"
printf 'round\tworkload\tpath\ttps\tlatency_ms\tfailed\tproxy_cpu_us\tload1\texit\tsteal_us\tbusy_us\n' >"$RAW"
COMMANDS=()
TICKS=$(getconf CLK_TCK)

# run_one ROUND WORKLOAD PATH
run_one() {
    local round=$1 w=$2 path=$3 port pid flags out t0 t1 rc=0 tps lat failed txns cpu="" load s0 s1 steal="" busy=""
    port=$(port_of "$w" "$path")
    pid=$(pid_of "$w" "$path")
    flags=$(workload_flags "$w")
    if [[ $w == tpcb-* ]]; then
        # What pgbench does itself without -n, done directly so every path starts alike.
        psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$DB" \
            -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'TRUNCATE pgbench_history' \
            -c 'CHECKPOINT' >/dev/null
    fi
    load=$(load1)
    out="$WORK/run-$round-$w-$path.log"
    local cmd="pgbench -n $flags -c $CLIENTS -j $THREADS -T $DURATION -h 127.0.0.1 -p $port -U postgres $DB"
    [[ $round == 1 ]] && COMMANDS+=("$path $w: $cmd")
    [[ -n $pid ]] && t0=$(cpu_ticks "$pid")
    s0=$(cpu_totals)
    # shellcheck disable=SC2086
    pgbench -n $flags -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres "$DB" \
        >"$out" 2>&1 || rc=$?
    s1=$(cpu_totals)
    [[ -n $pid ]] && t1=$(cpu_ticks "$pid")
    tps=$(awk '/^tps = / {print $3; exit}' "$out")
    lat=$(awk '/^latency average = / {print $4; exit}' "$out")
    failed=$(awk '/^number of failed transactions: / {print $5; exit}' "$out")
    txns=$(awk '/^number of transactions actually processed: / {print $6; exit}' "$out")
    if [[ -n $pid && -n $txns && $txns -gt 0 ]]; then
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$TICKS" -v n="$txns" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
    fi
    if [[ -n $txns && $txns -gt 0 ]]; then
        # Whole machine, per transaction: CPU time the host gave to other guests (steal) and
        # CPU time spent here (user, nice, system, irq, softirq).
        read -r steal busy < <(awk -v a="$s0" -v b="$s1" -v hz="$TICKS" -v n="$txns" 'BEGIN {
            split(a, x, " "); split(b, y, " ");
            printf "%.1f %.1f\n", (y[2] - x[2]) / hz * 1e6 / n, (y[1] - x[1]) / hz * 1e6 / n }')
    fi
    if ((rc != 0)); then
        log "  $w via $path: pgbench exit $rc: $(grep -m1 -i 'error\|fatal' "$out" || tail -1 "$out")"
    fi
    log "  round $round $w $path: tps=${tps:-?} lat=${lat:-?}ms cpu/txn=${cpu:-n/a}us steal/txn=${steal:-?}us load=$load"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$path" "$tps" "$lat" "$failed" "$cpu" "$load" "$rc" "$steal" "$busy" >>"$RAW"
}

LOADS=()
PATHS=(direct tandem pgbouncer)
[[ -n $ALT_PATH ]] && PATHS+=("$ALT_PATH")
for ((round = 1; round <= ROUNDS; round++)); do
    wait_low_load "$MAX_LOAD" "$LOAD_WAIT"
    LOADS+=("round $round: $(uptime | sed 's/^ *//')")
    log "round $round/$ROUNDS ($(uptime | sed 's/.*load/load/'))"
    for w in "${WORKLOADS[@]}"; do
        # Rotate the order of the paths each round so none always runs first.
        for ((i = 0; i < ${#PATHS[@]}; i++)); do
            run_one "$round" "$w" "${PATHS[$(((i + round - 1) % ${#PATHS[@]}))]}"
        done
    done
done

# --- memory with idle clients -----------------------------------------------------------
# idle_rss NAME PID PORT: RSS of a proxy before and while $IDLE idle sessions are logged in.
IDLE_ROWS=()
idle_rss() {
    local name=$1 pid=$2 port=$3 before after ready="$WORK/idle-$1.ready" release="$WORK/idle-$1.release" ipid rc=0
    before=$(rss_kb "$pid")
    python3 "$BENCH_DIR/idle_clients.py" 127.0.0.1 "$port" postgres "$DB" "$IDLE" "$ready" "$release" \
        >"$WORK/idle-$name.log" 2>&1 &
    ipid=$!
    BENCH_PIDS+=("$ipid")
    for _ in $(seq 1 1200); do
        [[ -s $ready ]] && break
        kill -0 "$ipid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -s $ready ]]; then
        log "idle clients against $name failed: $(tail -2 "$WORK/idle-$name.log")"
        IDLE_ROWS+=("| $name | $before | failed | — | — | $(tail -1 "$WORK/idle-$name.log") |")
        touch "$release"
        wait "$ipid" 2>/dev/null || true
        return 0
    fi
    sleep 2
    after=$(rss_kb "$pid")
    local check="ok"
    psql -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d "$DB" -c 'SELECT 1' >/dev/null 2>&1 || check="SELECT 1 failed"
    touch "$release"
    wait "$ipid" || rc=$?
    local secs
    secs=$(cut -d' ' -f2 "$ready")
    IDLE_ROWS+=("| $name | $((before / 1024)) MiB | $((after / 1024)) MiB | $(((after - before) / IDLE)) kB | ${secs}s | $check; idle client exit $rc |")
    log "idle $name: RSS ${before} kB -> ${after} kB with $IDLE clients"
}
log "memory with $IDLE idle clients"
idle_rss tandem "$TANDEM_PID" "$TANDEM_PORT"
idle_rss "pgbouncer (transaction)" "$PGB_TX_PID" "$PGB_TX_PORT"

# --- profile ------------------------------------------------------------------------------
# syscall_row NAME PID PORT: one -S -M simple run through a proxy under `perf stat`; a table row
# of system calls, context switches and CPU per transaction, by kind of call.
SYSCALL_EVENTS=raw_syscalls:sys_enter,context-switches,task-clock
for sc in read write writev readv recvfrom sendto epoll_wait epoll_ctl futex sched_yield; do
    SYSCALL_EVENTS+=",syscalls:sys_enter_$sc"
done
syscall_row() {
    local name=$1 pid=$2 port=$3 statf="$WORK/perf-stat-${1%% *}.txt" runlog="$WORK/perf-stat-run-${1%% *}.log"
    perf stat -x, -e "$SYSCALL_EVENTS" -o "$statf" -p "$pid" -- sleep "$DURATION" >/dev/null 2>&1 &
    local ppid=$!
    BENCH_PIDS+=("$ppid")
    pgbench -n -S -M simple -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres "$DB" \
        >"$runlog" 2>&1 || true
    wait "$ppid" || true
    local txns
    txns=$(awk '/^number of transactions actually processed: / {print $6; exit}' "$runlog")
    python3 - "$statf" "${txns:-0}" "$name" "$(awk '/^tps = / {print $3; exit}' "$runlog")" <<'PY'
import sys
path, txns, name, tps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
vals = {}
for line in open(path):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[0] and parts[0][0].isdigit():
        vals[parts[2]] = float(parts[0])
def per(ev):
    return f"{vals[ev] / txns:.2f}" if txns and ev in vals else "—"
kinds = []
for ev, v in sorted(vals.items(), key=lambda kv: -kv[1]):
    if ev.startswith("syscalls:sys_enter_") and txns and v / txns >= 0.05:
        kinds.append(f"{ev[len('syscalls:sys_enter_'):]} {v / txns:.2f}")
cpu = f"{vals['task-clock'] * 1000 / txns:.1f}" if txns and "task-clock" in vals else "—"
print(f"| {name} | {float(tps or 0):,.0f} | {per('raw_syscalls:sys_enter')} | {per('context-switches')} | {cpu} | {', '.join(kinds)} |")
PY
}

PROFILE_MD="(profile skipped: PROFILE=0)"
if [[ $PROFILE == 1 ]]; then
    if ! perf stat -e cpu-clock true >/dev/null 2>&1; then
        PROFILE_MD="(profile skipped: perf does not work here)"
    else
        log "system calls per transaction (perf stat), -S -M simple"
        SYSCALL_ROWS=$(
            syscall_row tandem "$TANDEM_PID" "$TANDEM_PORT"
            [[ -n $ALT_PID ]] && syscall_row "$ALT_PATH" "$ALT_PID" "$ALT_PORT"
            syscall_row "pgbouncer (transaction)" "$PGB_TX_PID" "$PGB_TX_PORT"
        )
        log "perf profile of tandem under -S -M simple"
        PD="$WORK/perf.data"
        perf record -q -F 400 -e cpu-clock --call-graph dwarf,16384 -o "$PD" -p "$TANDEM_PID" \
            -- sleep "$DURATION" >"$WORK/perf-record.log" 2>&1 &
        perf_pid=$!
        BENCH_PIDS+=("$perf_pid")
        pgbench -n -S -M simple -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$TANDEM_PORT" \
            -U postgres "$DB" >"$WORK/profile-run.log" 2>&1 || true
        wait "$perf_pid" || true
        log "perf report (this takes a while)"
        perf report -i "$PD" --no-children --sort dso --stdio 2>/dev/null \
            | grep -E '^ +[0-9]' | sed 's/ *$//' | head -8 >"$WORK/perf-dso.txt" || true
        perf report -i "$PD" --no-children --no-inline -g none --sort dso,symbol --stdio --percent-limit 0.5 2>/dev/null \
            | grep -E '^ +[0-9]' | cut -c1-150 | sed 's/ *$//' | head -40 >"$WORK/perf-self.txt" || true
        perf report -i "$PD" --children --no-inline -g none --sort symbol --stdio --percent-limit 1 2>/dev/null \
            | grep -E '^ +[0-9]' | grep -E 'tandem_proxy|tandem_core|pg_query|tracing|tokio_postgres|bytes::|alloc::|malloc|free' \
            | cut -c1-170 | sed 's/ *$//' | head -40 >"$WORK/perf-children.txt" || true
        PROFILE_MD=$(
            echo "System calls, context switches and CPU of the proxy process per transaction, one"
            echo "\`-S -M simple\` run each under \`perf stat -e raw_syscalls:sys_enter,context-switches,task-clock,syscalls:sys_enter_*\`:"
            echo
            echo "| proxy | TPS | syscalls / txn | context switches / txn | CPU µs / txn | by call (per txn) |"
            echo "|---|---:|---:|---:|---:|---|"
            echo "$SYSCALL_ROWS"
            echo
            echo "Profile: \`perf record -F 400 -e cpu-clock --call-graph dwarf -p <tandem pid>\` for ${DURATION}s"
            echo "during \`-S -M simple\` ($(awk '/^tps = / {printf "%.0f", $3; exit}' "$WORK/profile-run.log") TPS under perf)."
            echo
            echo "By shared object (self time):"
            echo
            echo '```'
            cat "$WORK/perf-dso.txt"
            echo '```'
            echo
            echo "Hottest functions, self time (inlined frames folded into their caller):"
            echo
            echo '```'
            cat "$WORK/perf-self.txt"
            echo '```'
            echo
            echo "Inclusive time of proxy-side functions (children), 1% or more:"
            echo
            echo '```'
            cat "$WORK/perf-children.txt"
            echo '```'
        )
    fi
fi

TANDEM_RSS_END=$(rss_kb "$TANDEM_PID")

# --- results --------------------------------------------------------------------------------
results_path
{
    echo "# Proxy benchmark: direct PostgreSQL vs Tandem vs PgBouncer"
    echo
    echo "Written by \`bench/proxy.sh\`. $ROUNDS interleaved rounds; in each round every workload runs on"
    echo "every path back to back (the order rotates per round), each run"
    echo "\`-c $CLIENTS -j $THREADS -T $DURATION\`, pgbench scale $SCALE. pgbench, the proxy and PostgreSQL"
    echo "share the same cores, so a proxy competes with PostgreSQL for CPU: this measures cost, not a"
    echo "network hop."
    echo
    echo "## Machine"
    echo
    echo "$MACHINE"
    echo
    echo "## Results"
    echo
    python3 "$BENCH_DIR/summarize.py" "$RAW" "${QUIET_STEAL:-3}"
    echo
    echo "- PgBouncer (Debian's 1.18) has no \`max_prepared_statements\` (added in 1.21), so it cannot"
    echo "  run \`-M prepared\` in transaction mode; the prepared rows compare against a PgBouncer"
    echo "  instance in **session** mode. Tandem runs in **transaction** mode in every row."
    if [[ $ALT_PATH == tandem-plain ]]; then
        echo "- \`tandem\` is the profile-guided release build made by \`bench/pgo.sh\` (trained on pgbench"
        echo "  through the proxy: the workloads here, plus extended protocol, COPY, read routing to a"
        echo "  replica and session pooling); \`tandem-plain\` is \`cargo build --release\` of the same"
        echo "  commit, run as a fourth path in the same rounds with the same flags."
    elif [[ $ALT_PATH == tandem-1w ]]; then
        echo "- \`tandem-1w\` is the same Tandem build and flags with \`--threads 1\` (one worker thread,"
        echo "  one event loop, instead of one per core), run as a fourth path in the same rounds: the"
        echo "  difference between the two rows is what the worker threads bring."
    fi
    echo "- Read splitting is off in Tandem (\`--no-read-split\`): one primary behind every path."
    echo "- \"proxy CPU µs per txn\" is the proxy process's user+system CPU time during the run"
    echo "  divided by the transactions pgbench completed."
    echo "- Load average before each round (other agents compile on this machine):"
    for l in "${LOADS[@]}"; do echo "  - $l"; done
    echo
    echo "## Memory with $IDLE idle clients"
    echo
    echo "Each client logged in (startup + trust auth, ReadyForQuery) and then idle, held by"
    echo "\`bench/idle_clients.py\`; VmRSS from /proc/PID/status before and with all of them connected."
    echo
    echo "| proxy | RSS before | RSS with $IDLE idle clients | per client | time to log all in | check |"
    echo "|---|---:|---:|---:|---:|---|"
    for r in "${IDLE_ROWS[@]}"; do echo "$r"; done
    echo
    echo "Tandem RSS at the end of the run: $((TANDEM_RSS_END / 1024)) MiB."
    echo
    echo "## Where Tandem's CPU goes (\`-S -M simple\`)"
    echo
    echo "$PROFILE_MD"
    echo
    echo "## Setup and exact commands"
    echo
    echo "- PostgreSQL settings (one server behind all three paths): $(grep -A20 '^# --- tandem bench' "$WORK/primary/postgresql.conf" | grep -v '^#' | grep . | grep -v -E 'port|unix_socket' | sed 's/ *= */=/' | paste -sd, | sed 's/,/, /g'); everything else default."
    echo "- Tandem: \`tandem --log info proxy --listen 127.0.0.1:PORT --primary 127.0.0.1:PGPORT --no-read-split --pool-mode transaction --auth trust --control-user postgres --pool-size $POOL_SIZE --max-client-conn $((IDLE + 500))\` ($([[ -n $TANDEM_PLAIN_BIN ]] && echo "profile-guided release build, see above" || echo "release build"))."
    echo "- PgBouncer: \`pool_mode = transaction\` (and a second instance with \`session\`), \`auth_type = trust\`, \`default_pool_size = $POOL_SIZE\`, \`max_client_conn = $((IDLE + 500))\`, default logging."
    echo "- Before each TPC-B run: \`VACUUM pgbench_branches; VACUUM pgbench_tellers; TRUNCATE pgbench_history; CHECKPOINT\` directly on PostgreSQL (what pgbench does itself without \`-n\`), so pgbench runs with \`-n\` on every path."
    echo "- pgbench commands (round 1; the ports differ per path):"
    echo
    echo '```'
    for c in "${COMMANDS[@]}"; do echo "$c"; done
    echo '```'
} >"$OUT"
log "wrote $OUT"
