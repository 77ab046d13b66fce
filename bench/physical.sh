#!/usr/bin/env bash
# Physical-mode benchmark (issue #15): what synchronous replication costs the primary's
# commits, with Tandem's WAL relay in the quorum against PostgreSQL's own standbys; writes
# bench/results/physical-<date>.md.
#
# One primary, two physical standbys s1 and s2 (made by `tandem replica add`) and the WAL
# relay (`tandem replicator`, i.e. pg_receivewal --synchronous supervised), all on this
# machine. pgbench TPC-B `-M prepared -c $CLIENTS -j $THREADS -T $DURATION` on the primary
# (fsync = on, synchronous_commit = on) in each configuration, ROUNDS interleaved rounds (the
# order rotates per round):
#   none           primary alone: standbys and relay stopped, synchronous_standby_names ''
#   async          s1, s2 streaming + the relay (`--mode async`); names ''
#   sync-relay     the relay `--mode sync` sets ANY 1 ("s1", "s2", "tandem_relay")
#   sync-standbys  ANY 1 ("s1", "s2") by hand (ALTER SYSTEM), relay stopped: PostgreSQL alone
#   relay-only     ANY 1 ("tandem_relay") by hand; s1, s2 streaming but not in the list
#   standby-only   ANY 1 ("s1") by hand; relay and s2 streaming but not in the list
# relay-only and standby-only run the same processes and differ only in whom the commit
# waits for: the relay's own commit cost against one native standby's.
# During every run a sampler reads, once a second, the relay's GET /status (lag_bytes of the
# relay and of each standby) and the primary's pg_stat_replication (flush lag per member).
# With SYSCALLS=1, afterwards one extra (uncounted) run traces the fsync/fdatasync calls of
# pg_receivewal and of s1's walreceiver with strace -c.
#
# Usage: bench/physical.sh       (as root; see bench/README.md)
# Knobs: ROUNDS=3 DURATION=25 CLIENTS=8 THREADS=2 SCALE=10 SYSCALLS=1
#   CONFIGS="none async sync-relay sync-standbys relay-only standby-only" MAX_LOAD=4
#   LOAD_WAIT=10 CATCHUP_LIMIT=120 TANDEM_BIN=<binary; default: cargo build --release>
#   SKIP_BUILD=0 KEEP_WORK=0 OUT=<file>
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-25}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
SYSCALLS=${SYSCALLS:-1}
MAX_LOAD=${MAX_LOAD:-4}
LOAD_WAIT=${LOAD_WAIT:-10}
CATCHUP_LIMIT=${CATCHUP_LIMIT:-120}
CONFIGS=(${CONFIGS:-none async sync-relay sync-standbys relay-only standby-only})
OUT=${OUT:-$BENCH_DIR/results/physical-$(date +%Y-%m-%d).md}
RELAY=tandem_relay

bench_init physical
if [[ -n ${TANDEM_BIN:-} ]]; then
    [[ -x $TANDEM_BIN ]] || die "TANDEM_BIN=$TANDEM_BIN is not executable"
    # A copy, so that a rebuild of the original cannot change the binary under the run (the
    # standbys' restore_command runs it too).
    BIN_DESC="the binary given as TANDEM_BIN=$TANDEM_BIN"
    cp "$TANDEM_BIN" "$WORK/tandem"
    TANDEM_BIN="$WORK/tandem"
else
    build_tandem
    BIN_DESC="release build"
fi
"$TANDEM_BIN" replica add --help >/dev/null 2>&1 || die "this build has no 'tandem replica add' command"
MACHINE=$(machine_info)

# --- primary -----------------------------------------------------------------------------
P_PORT=$(free_port)
pg_start_replicating primary "$P_PORT" replica
PRIMARY_URL="postgres://postgres@127.0.0.1:$P_PORT/postgres"
psqlp() { psql -X -qAt -h 127.0.0.1 -p "$P_PORT" -U postgres -d postgres "$@"; }
log "pgbench -i -s $SCALE on the primary (127.0.0.1:$P_PORT)"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$P_PORT" -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed"
psqlp -c 'VACUUM ANALYZE' >/dev/null
PGBENCH="pgbench -n -M prepared -c $CLIENTS -j $THREADS"

# --- standbys ----------------------------------------------------------------------------
STANDBYS=(s1 s2)
declare -A S_PORT
for s in "${STANDBYS[@]}"; do
    S_PORT[$s]=$(free_port)
    log "tandem replica add $s (port ${S_PORT[$s]})"
    "$TANDEM_BIN" replica add "$s" --from "$PRIMARY_URL" --data-dir "$WORK/$s" --port "${S_PORT[$s]}" \
        --relay "$WORK/relay/wal" --no-start >"$WORK/replica-add-$s.log" 2>&1 \
        || die "tandem replica add $s failed: $(tail -3 "$WORK/replica-add-$s.log")"
    BENCH_PGDATA+=("$WORK/$s")
done
STANDBYS_UP=0
standbys_start() {
    local s
    for s in "${STANDBYS[@]}"; do pg_start "$s"; done
    STANDBYS_UP=1
}
standbys_stop() {
    local s
    for s in "${STANDBYS[@]}"; do
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/$s" -w -t 60 stop -m fast >/dev/null || die "could not stop standby $s"
    done
    STANDBYS_UP=0
}

# --- the relay -----------------------------------------------------------------------------
RELAY_MODE=off
RELAY_PID=""
STATUS_URL=""
RELAY_SET_NAMES=""   # what the relay itself wrote into synchronous_standby_names in sync mode
relay_start() { # MODE
    local mode=$1 port
    port=$(free_port)
    local cmd=("$TANDEM_BIN" replicator --primary "$PRIMARY_URL" --mode "$mode" --sync-quorum 1
        --data-dir "$WORK/relay" --status-listen "127.0.0.1:$port")
    for s in "${STANDBYS[@]}"; do cmd+=(--replica "$s=postgres://postgres@127.0.0.1:${S_PORT[$s]}/postgres"); done
    local shown="${cmd[*]/#$TANDEM_BIN/tandem}"
    shown=${shown//127.0.0.1:$P_PORT/127.0.0.1:PRIMARY}
    shown=${shown//127.0.0.1:$port/127.0.0.1:STATUS_PORT}
    COMMANDS+=("relay ($mode): ${shown//$WORK/WORK}")
    spawn "$WORK/relay-$mode.log" "${cmd[@]}"
    RELAY_PID=$SPAWNED_PID
    RELAY_MODE=$mode
    STATUS_URL="http://127.0.0.1:$port/status"
    wait_port "$port" 30 || die "the relay's status endpoint did not come up (see $WORK/relay-$mode.log)"
    if [[ $mode == sync ]]; then
        # The relay joins the quorum itself once the primary lists it as streaming.
        local want="ANY 1 (\"s1\", \"s2\", \"$RELAY\")" i
        for ((i = 0; i < 200; i++)); do
            [[ $(psqlp -c 'SHOW synchronous_standby_names') == "$want" ]] && break
            sleep 0.1
        done
        RELAY_SET_NAMES=$(psqlp -c 'SHOW synchronous_standby_names')
        [[ $RELAY_SET_NAMES == "$want" ]] || log "warning: the relay set synchronous_standby_names to '$RELAY_SET_NAMES', not '$want'"
    fi
}
relay_stop() {
    [[ -n $RELAY_PID ]] || return 0
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    for _ in $(seq 1 75); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=""
    RELAY_MODE=off
    STATUS_URL=""
}

# set_names VALUE: the primary's synchronous_standby_names, effective for new sessions.
set_names() {
    local v=$1 i
    psqlp -c "ALTER SYSTEM SET synchronous_standby_names = '${v//\'/\'\'}'" -c 'SELECT pg_reload_conf()' >/dev/null
    for ((i = 0; i < 100; i++)); do
        [[ $(psqlp -c 'SHOW synchronous_standby_names') == "$v" ]] && return 0
        sleep 0.1
    done
    die "synchronous_standby_names did not become '$v'"
}

# wait_members NAMES...: until each is streaming and has flushed (standbys: replayed) all
# but 64 kB of the primary's WAL.
wait_members() {
    local want=$# i have
    ((want == 0)) && return 0
    local list
    list=$(printf "'%s'," "$@")
    for ((i = 0; i < CATCHUP_LIMIT * 5; i++)); do
        have=$(psqlp -c "SELECT count(*) FROM pg_stat_replication WHERE application_name IN (${list%,})
            AND state = 'streaming'
            AND pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(replay_lsn, flush_lsn)) < 65536")
        ((have == want)) && return 0
        sleep 0.2
    done
    psqlp -c 'SELECT application_name, state, sent_lsn, flush_lsn, replay_lsn, pg_current_wal_lsn() FROM pg_stat_replication' >&2
    die "members $* not streaming and caught up after ${CATCHUP_LIMIT}s"
}

# config_state CONFIG: sets W_STANDBYS (0/1), W_RELAY (off/async/sync), W_NAMES.
config_state() {
    case $1 in
        none) W_STANDBYS=0 W_RELAY=off W_NAMES="" ;;
        async) W_STANDBYS=1 W_RELAY=async W_NAMES="" ;;
        sync-relay) W_STANDBYS=1 W_RELAY=sync W_NAMES="ANY 1 (\"s1\", \"s2\", \"$RELAY\")" ;;
        sync-standbys) W_STANDBYS=1 W_RELAY=off W_NAMES='ANY 1 ("s1", "s2")' ;;
        relay-only) W_STANDBYS=1 W_RELAY=sync W_NAMES="ANY 1 (\"$RELAY\")" ;;
        standby-only) W_STANDBYS=1 W_RELAY=sync W_NAMES='ANY 1 ("s1")' ;;
        *) die "unknown configuration $1" ;;
    esac
}

# enter CONFIG: bring standbys, relay and the quorum to CONFIG's state, everything caught up.
enter() {
    config_state "$1"
    # Nobody waits on anybody while processes come and go.
    set_names ""
    if [[ $RELAY_MODE != "$W_RELAY" ]]; then relay_stop; fi
    if ((STANDBYS_UP != W_STANDBYS)); then
        if ((W_STANDBYS)); then standbys_start; else standbys_stop; fi
    fi
    if [[ $RELAY_MODE != "$W_RELAY" && $W_RELAY != off ]]; then
        relay_start "$W_RELAY"
        set_names ""   # the sync relay wrote its quorum; hold it off until everyone caught up
    fi
    # Same starting point for every run: what pgbench does before a run without -n, and a
    # checkpoint (so every run pays the same full-page writes).
    psqlp -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'TRUNCATE pgbench_history' \
        -c 'CHECKPOINT' >/dev/null
    local members=()
    ((W_STANDBYS)) && members+=("${STANDBYS[@]}")
    [[ $W_RELAY != off ]] && members+=("$RELAY")
    wait_members "${members[@]}"
    set_names "$W_NAMES"
    sleep 1
}

# --- sampler: relay /status and pg_stat_replication once a second ------------------------
cat >"$WORK/sampler.py" <<'EOF'
import json, subprocess, sys, time, urllib.request
out, url, port = sys.argv[1], sys.argv[2], sys.argv[3]
q = ("SELECT application_name, state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint, "
     "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint::text, ''), "
     "coalesce((extract(epoch FROM flush_lag) * 1000)::numeric(12,3)::text, '') FROM pg_stat_replication")
t0 = time.time()
with open(out, "w", buffering=1) as f:
    f.write("t\tsource\tmember\tstate\tsync_state\tlag_bytes\tflush_lag_bytes\treplay_lag_bytes\tflush_lag_ms\n")
    while True:
        t = f"{time.time() - t0:.1f}"
        if url:
            try:
                s = json.load(urllib.request.urlopen(url, timeout=2))
                for m in [s["relay"]] + s["standbys"]:
                    lag = m.get("lag_bytes")
                    f.write(f"{t}\tstatus\t{m['name']}\t{m['state']}\t{m.get('sync_state') or ''}\t"
                            f"{'' if lag is None else lag}\t\t\t\n")
            except Exception as e:
                f.write(f"{t}\tstatus\t-\terror: {e}\t\t\t\t\t\n")
        try:
            rows = subprocess.run(["psql", "-X", "-qAt", "-F", "\t", "-h", "127.0.0.1", "-p", port, "-U", "postgres",
                                   "-d", "postgres", "-c", q], capture_output=True, text=True, timeout=3).stdout
            for r in rows.splitlines():
                name, state, sync, flush, replay, flush_ms = r.split("\t")
                f.write(f"{t}\tpg\t{name}\t{state}\t{sync}\t\t{flush}\t{replay}\t{flush_ms}\n")
        except Exception:
            pass
        time.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))
EOF

# --- CPU: ours vs everyone else's on this (shared) machine --------------------------------
# our_roots: PIDs whose process trees are this benchmark's (servers, relay, this script).
our_roots() {
    local d
    for d in primary "${STANDBYS[@]}"; do [[ -f $WORK/$d/postmaster.pid ]] && head -1 "$WORK/$d/postmaster.pid"; done
    echo "${RELAY_PID:-}" $$
}

# --- runs ------------------------------------------------------------------------------------
RUNS="$WORK/runs.tsv"
printf 'round\tconfig\ttps\tlatency_ms\ttxns\tload1\tsteal_us_per_txn\tbusy_pct\tours_pct\tothers_pct\tours_cpu_s\tflushes_per_s\tms_per_flush\trelay_cpu_pct\tnames\n' >"$RUNS"
COMMANDS=()
TICKS=$(getconf CLK_TCK)
DISK=$(basename "$(df --output=source "$WORK" | tail -1)")
# disk_flushes: "FLUSHES MS_FLUSHING" of the disk the work dir is on (/proc/diskstats, Linux 5.5+).
disk_flushes() { awk -v d="$DISK" '$3 == d {print $19 + 0, $20 + 0; exit}' /proc/diskstats; }
# relay_pids: the relay process and its pg_receivewal.
relay_pids() { [[ -n $RELAY_PID ]] && echo "$RELAY_PID $(pgrep -P "$RELAY_PID" -x pg_receivewal | paste -sd' ')" || true; }
pid_ticks() {
    local sum=0 pid t
    for pid in "$@"; do
        t=$(cpu_ticks "$pid" 2>/dev/null || echo 0)
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

run_one() { # ROUND CONFIG
    local round=$1 cfg=$2
    enter "$cfg"
    wait_low_load "$MAX_LOAD" "$LOAD_WAIT"
    local load names spid c0 c1 log="$WORK/run-$round-$cfg.log"
    load=$(load1)
    names=$(psqlp -c 'SHOW synchronous_standby_names')
    log "round $round: $cfg (names '$names', load $load)"
    python3 "$WORK/sampler.py" "$WORK/samples-$round-$cfg.tsv" "$STATUS_URL" "$P_PORT" &
    spid=$!
    BENCH_PIDS+=("$spid")
    local rp d0 d1 r0 r1
    rp=$(relay_pids)
    d0=$(disk_flushes)
    r0=$(pid_ticks $rp)
    python3 "$BENCH_DIR/cpu_split.py" start "$WORK/cpu-$round-$cfg.json"
    c0=$(cpu_totals)
    $PGBENCH -T "$DURATION" -h 127.0.0.1 -p "$P_PORT" -U postgres postgres >"$log" 2>&1 \
        || log "pgbench exited non-zero: $(tail -1 "$log")"
    c1=$(cpu_totals)
    r1=$(pid_ticks $rp)
    local split
    # Ours %, others' %, our CPU seconds (the steal column is measured separately here).
    split=$(python3 "$BENCH_DIR/cpu_split.py" end "$WORK/cpu-$round-$cfg.json" $(our_roots)) &&
        split=$(cut -d' ' -f1-3 <<<"$split") || split="— — —"
    d1=$(disk_flushes)
    sleep 1.2   # one more sample just after the load
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    local tps lat txns
    tps=$(awk '/^tps = / {print $3; exit}' "$log")
    lat=$(awk '/^latency average = / {print $4; exit}' "$log")
    txns=$(awk '/^number of transactions actually processed:/ {print $NF; exit}' "$log")
    read -r steal_us busy <<<"$(awk -v a="$c0" -v b="$c1" -v n="${txns:-0}" -v hz="$TICKS" -v d="$DURATION" -v cpus="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        printf "%.1f %.0f", (n > 0 ? (y[2] - x[2]) / hz * 1e6 / n : 0), (y[1] - x[1]) / hz / d / cpus * 100 }')"
    local fl_s fl_ms relay_cpu="—"
    read -r fl_s fl_ms <<<"$(awk -v a="$d0" -v b="$d1" -v d="$DURATION" 'BEGIN {
        split(a, x, " "); split(b, y, " "); n = y[1] - x[1];
        printf "%.0f %s", n / d, (n > 0 ? sprintf("%.2f", (y[2] - x[2]) / n) : "—") }')"
    [[ -n $rp ]] && relay_cpu=$(awk -v t=$((r1 - r0)) -v hz="$TICKS" -v d="$DURATION" 'BEGIN {printf "%.0f", t / hz / d * 100}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "${tps:-0}" "${lat:-}" "${txns:-0}" "$load" \
        "$steal_us" "$busy" $split "$fl_s" "$fl_ms" "$relay_cpu" "$names" >>"$RUNS"
    log "round $round: $cfg: ${tps:-?} TPS, latency ${lat:-?} ms (CPU % of the machine, ours / others: $(cut -d' ' -f1-2 <<<"$split" | sed 's| | / |'))"
}

COMMANDS+=("load: $PGBENCH -T $DURATION -h 127.0.0.1 -p PRIMARY -U postgres postgres (pgbench -i -s $SCALE first)")
n=${#CONFIGS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < n; i++)); do
        run_one "$round" "${CONFIGS[$(((i + round - 1) % n))]}"
    done
done

# --- syscalls of the two kinds of quorum member (not counted in the results) -------------
SYSCALL_MD="(skipped: SYSCALLS=0 or no strace)"
TRACED="openat,fsync,fdatasync,write,pwrite64,sendto"
cat >"$WORK/strace_summary.py" <<'EOF'
import collections, re, statistics, sys
# strace -T lines: "12:00:00.123456 fsync(3) = 0 <0.000388>"
calls = collections.defaultdict(list)
opens = 0
for line in open(sys.argv[1]):
    m = re.match(r"\S+ (\w+)\((.*)\) += (-?\d+).*<([\d.]+)>", line)
    if not m:
        continue
    name, args, ret, t = m.group(1), m.group(2), int(m.group(3)), float(m.group(4)) * 1e6
    if name == "openat":
        if "O_CREAT" in args and ret >= 0:
            opens += 1
        continue
    calls[name].append(t)
secs = float(sys.argv[2])
print(f"{'syscall':<10} {'calls/s':>8} {'mean µs':>8} {'p50 µs':>8} {'p99 µs':>8} {'max µs':>9} {'≥5 ms':>6}")
for name in sorted(calls, key=lambda n: -sum(calls[n])):
    v = sorted(calls[name])
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"{name:<10} {len(v) / secs:>8.0f} {statistics.mean(v):>8.0f} {p(0.5):>8.0f} {p(0.99):>8.0f} {v[-1]:>9.0f} "
          f"{sum(1 for x in v if x >= 5000):>6}")
print(f"files created (openat O_CREAT): {opens}")
# Segment switches: the first open of each new WAL segment file (24 hex digits, optionally
# .partial), and how long no reply (sendto) went to the primary around it.
lines = open(sys.argv[1]).read().splitlines()
def ts(l):
    h, m, x = l.split()[0].split(":")
    return int(h) * 3600 + int(m) * 60 + float(x)
seen, windows = set(), {}
for i, l in enumerate(lines):
    m = re.search(r'openat\(.*?"(?:[^"]*/)?([0-9A-F]{24})(?:\.partial)?"', l)
    if not m or "archive_status" in l or m.group(1) in seen:
        continue
    seen.add(m.group(1))
    j = i - 1
    while j >= 0 and " sendto(" not in lines[j]:
        j -= 1
    k = i + 1
    while k < len(lines) and " sendto(" not in lines[k]:
        k += 1
    if j >= 0 and k < len(lines) and j not in windows:   # one entry per silent window
        created = any("O_CREAT" in x and "archive_status" not in x and re.search(r"[0-9A-F]{24}", x) for x in lines[j:k])
        writes = sum(1 for x in lines[j:k] if re.match(r"\S+ write\(", x))
        windows[j] = f"{(ts(lines[k]) - ts(lines[j])) * 1000:.0f} ms{' (new file, %d writes)' % writes if created else ''}"
gaps = [windows[j] for j in sorted(windows)]
if gaps:
    print("segment switches, no reply to the primary for: " + ", ".join(gaps))
EOF
# fsync vs fdatasync of 8 kB overwrites in a preallocated 16 MB file, as the two programs do.
cat >"$WORK/fsync_test.py" <<'EOF'
import os, statistics, sys, time
path = os.path.join(sys.argv[1], "fsync-test")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"\0" * (16 << 20)); os.fsync(fd)
buf = b"x" * 8192
for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)) * 2:
    t = []
    for i in range(300):
        os.pwrite(fd, buf, (i * 8192) % (16 << 20))
        a = time.perf_counter(); sync(fd); t.append((time.perf_counter() - a) * 1e6)
        time.sleep(0.002)   # let the mtime tick, as between two batches of WAL
    print(f"{name:<10} mean {statistics.mean(t):6.0f} µs  p50 {statistics.median(t):6.0f} µs  max {max(t):7.0f} µs")
os.close(fd); os.unlink(path)
# A new segment as pg_receivewal 15 makes it (walmethods.c dir_open_for_write): 2048 write()s
# of 8 kB zeros, then fsync; meanwhile it reads nothing and acknowledges nothing.
zero = b"\0" * 8192
for n in range(3):
    p = f"{path}.{n}"
    a = time.perf_counter()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    for _ in range((16 << 20) // 8192):
        os.write(fd, zero)
    b = time.perf_counter()
    os.fsync(fd)
    c = time.perf_counter()
    os.close(fd); os.unlink(p)
    print(f"new 16 MB segment: writes {(b - a) * 1000:5.1f} ms + fsync {(c - b) * 1000:5.1f} ms = {(c - a) * 1000:5.1f} ms")
EOF
if [[ $SYSCALLS == 1 ]] && command -v strace >/dev/null 2>&1; then
    enter sync-relay
    RW_PID=$(pgrep -P "$RELAY_PID" -x pg_receivewal | head -1 || true)
    WR_PID=$(psql -X -qAt -h 127.0.0.1 -p "${S_PORT[s1]}" -U postgres -d postgres -c 'SELECT pid FROM pg_stat_wal_receiver')
    if [[ -n $RW_PID && -n $WR_PID ]]; then
        log "tracing pg_receivewal ($RW_PID) and s1's walreceiver ($WR_PID) under load"
        $PGBENCH -T 16 -h 127.0.0.1 -p "$P_PORT" -U postgres postgres >"$WORK/syscalls-pgbench.log" 2>&1 &
        PGB=$!
        sleep 3
        timeout -s INT 10 strace -tt -T -e trace="$TRACED" -o "$WORK/strace-receivewal.txt" -p "$RW_PID" >/dev/null 2>&1 &
        S1=$!
        timeout -s INT 10 strace -tt -T -e trace="$TRACED" -o "$WORK/strace-walreceiver.txt" -p "$WR_PID" >/dev/null 2>&1 &
        S2=$!
        wait "$S1" "$S2" 2>/dev/null || true
        wait "$PGB" || true
        set_names ""
        SYSCALL_MD=$(
            echo "\`strace -tt -T -e trace=$TRACED -p PID\` for 10 s of one extra pgbench run (configuration"
            echo "sync-relay; tracing slows both processes, so this run is not counted). Times are per call."
            echo
            echo "pg_receivewal (the relay):"
            echo
            echo '```'
            python3 "$WORK/strace_summary.py" "$WORK/strace-receivewal.txt" 10 || true
            echo '```'
            echo
            echo "walreceiver of standby s1:"
            echo
            echo '```'
            python3 "$WORK/strace_summary.py" "$WORK/strace-walreceiver.txt" 10 || true
            echo '```'
            echo
            echo "The same disk without load: one 8 kB overwrite in a preallocated 16 MB file, then fsync"
            echo "(what pg_receivewal calls) or fdatasync (the walreceiver, wal_sync_method = fdatasync),"
            echo "300 each, twice, 2 ms apart; then three new 16 MB segments made the way pg_receivewal 15"
            echo "makes each one (2048 8 kB writes of zeros, fsync), without strace:"
            echo
            echo '```'
            as_pg python3 "$WORK/fsync_test.py" "$WORK" || true
            echo '```'
        )
    else
        SYSCALL_MD="(skipped: could not find pg_receivewal ($RW_PID) or s1's walreceiver ($WR_PID))"
    fi
fi

# Back to a primary that waits for nobody, then stop the relay (it leaves the quorum).
set_names ""
relay_stop

# --- results -------------------------------------------------------------------------------
results_path
TABLES=$(python3 - "$RUNS" "$WORK" "${CONFIGS[*]}" <<'EOF'
import csv, glob, os, statistics, sys
runs = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
work, configs = sys.argv[2], sys.argv[3].split()
rounds = sorted({int(r["round"]) for r in runs})
by = {(int(r["round"]), r["config"]): r for r in runs}
tps = lambda c, k: float(by[(k, c)]["tps"]) if (k, c) in by else None
lat = lambda c, k: float(by[(k, c)]["latency_ms"]) if (k, c) in by and by[(k, c)]["latency_ms"] else None
med = lambda v: statistics.median(v) if v else None
def fmt(v, d=0):
    return "—" if v is None else f"{v:,.{d}f}"
def ratios(a, b):
    """Per-round ratios a/b (same round: the runs were minutes apart): median [min–max]."""
    v = [tps(a, k) / tps(b, k) for k in rounds if tps(a, k) and tps(b, k)]
    if not v:
        return "—"
    return f"**{statistics.median(v):.2f}x** [{min(v):.2f}–{max(v):.2f}]" if len(v) > 1 else f"**{v[0]:.2f}x**"
what = {
    "none": "(a) no replication: standbys and relay stopped, names ''",
    "async": "(b) async: s1, s2 streaming + relay `--mode async`",
    "sync-relay": "(c) `ANY 1 (s1, s2, tandem_relay)`, set by the relay (`--mode sync`)",
    "sync-standbys": "(d) `ANY 1 (s1, s2)` by hand, relay stopped (PostgreSQL alone)",
    "relay-only": "(e) `ANY 1 (tandem_relay)`; s1, s2 stream outside the quorum",
    "standby-only": "(f) `ANY 1 (s1)`; relay and s2 stream outside the quorum",
}
def col(c, key):
    v = []
    for k in rounds:
        try:
            v.append(float(by[(k, c)][key]))
        except (KeyError, ValueError):
            pass
    return med(v)
print("| configuration | " + " | ".join(f"TPS round {k}" for k in rounds) + " | **median TPS** | vs (a) | latency avg ms (median) | disk flushes/s | ms per flush | others' CPU % |")
print("|---|" + "---:|" * len(rounds) + "---:|---:|---:|---:|---:|---:|")
for c in configs:
    v = [tps(c, k) for k in rounds if tps(c, k) is not None]
    l = [lat(c, k) for k in rounds if lat(c, k) is not None]
    print(f"| {what.get(c, c)} | " + " | ".join(fmt(tps(c, k)) for k in rounds) +
          f" | **{fmt(med(v))}** | {ratios(c, 'none') if c != 'none' else '1.00x'} | {fmt(med(l), 2)} "
          f"| {fmt(col(c, 'flushes_per_s'))} | {fmt(col(c, 'ms_per_flush'), 2)} | {fmt(col(c, 'others_pct'))} |")
print()
def cost(c, k):
    """CPU µs per transaction of all our processes (pgbench, primary, standbys, relay)."""
    r = by.get((k, c))
    try:
        return float(r["ours_cpu_s"]) * 1e6 / float(r["txns"])
    except (TypeError, KeyError, ValueError, ZeroDivisionError):
        return None
def cost_ratios(a, b):
    v = [cost(a, k) / cost(b, k) for k in rounds if cost(a, k) and cost(b, k)]
    if not v:
        return "—"
    return f"{statistics.median(v):.2f}x [{min(v):.2f}–{max(v):.2f}]" if len(v) > 1 else f"{v[0]:.2f}x"
if any(cost(c, k) for c in configs for k in rounds):
    print("CPU per transaction: user+system CPU of all of this benchmark's processes (pgbench, primary,")
    print("standbys, relay) during the run ÷ transactions. On this saturated shared machine TPS follows")
    print("the CPU share the benchmark got (see \"others %\" under every run); CPU per transaction does not")
    print("depend on that share, so it compares configurations more steadily than TPS.")
    print()
    print("| configuration | " + " | ".join(f"µs/txn round {k}" for k in rounds) + " | **median µs/txn** | vs (a) |")
    print("|---|" + "---:|" * len(rounds) + "---:|---:|")
    for c in configs:
        v = [cost(c, k) for k in rounds if cost(c, k) is not None]
        print(f"| {what.get(c, c)} | " + " | ".join(fmt(cost(c, k)) for k in rounds) +
              f" | **{fmt(med(v))}** | {cost_ratios(c, 'none') if c != 'none' else '1.00x'} |")
    print()
print("Ratios within each round (median of the per-round ratios, [range]); TPS: higher is better,")
print("CPU per transaction: lower is better:")
print()
print("| comparison | TPS ratio | CPU/txn ratio |")
print("|---|---:|---:|")
pairs = [("sync-relay", "sync-standbys", "(c) relay in the quorum / (d) standbys only — goal ≥ 1.0x"),
         ("relay-only", "standby-only", "(e) relay alone / (f) one standby alone — the relay's own commit cost"),
         ("sync-relay", "async", "(c) sync with relay / (b) async"),
         ("sync-standbys", "async", "(d) sync standbys only / (b) async"),
         ("async", "none", "(b) async / (a) nothing")]
for a, b, label in pairs:
    if a in configs and b in configs:
        print(f"| {label} | {ratios(a, b)} | {cost_ratios(a, b)} |")
print()

# Lag: from the relay's /status (lag_bytes: the primary's position minus the relay's flush,
# minus each standby's replay) and pg_stat_replication (flush lag bytes and time).
samples = {}
for path in glob.glob(os.path.join(work, "samples-*.tsv")):
    base = os.path.basename(path)[len("samples-"):-len(".tsv")]
    k, c = base.split("-", 1)
    samples[(int(k), c)] = list(csv.DictReader(open(path), delimiter="\t"))
def kb(v):
    return "—" if v is None else f"{v / 1024:,.0f}"
print("Lag during the runs, per quorum member (all rounds of a configuration together). From the relay's")
print("`GET /status`: `lag_bytes` (relay: primary position − relay flushed; standby: − replayed), max over")
print("the samples and the largest value at the end of a run (the last sample while pgbench ran) in kB;")
print("trend = mean of the last third of a run's samples − mean of the first third, median over the runs")
print("(≈ 0: flat). From `pg_stat_replication`: median and max `flush_lag` (the time between the primary")
print("flushing WAL and hearing that the member flushed it: the wait a synchronous commit pays).")
print()
print("| configuration | member | /status lag kB: max | at end (worst run) | trend kB | flush_lag ms: median | max | samples |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for c in configs:
    if c == "none":
        continue
    members = {}
    for (k, cc), rows in samples.items():
        if cc != c:
            continue
        # samples while pgbench ran: all but the last (taken just after)
        ts = sorted({float(r["t"]) for r in rows})
        t_end = ts[-2] if len(ts) > 1 else (ts[-1] if ts else 0)
        for r in rows:
            if float(r["t"]) > t_end or r["member"] in ("-", ""):
                continue
            m = members.setdefault(r["member"], {"status": {}, "ms": []})
            if r["source"] == "status" and r["lag_bytes"]:
                m["status"].setdefault(k, []).append((float(r["t"]), int(r["lag_bytes"])))
            if r["source"] == "pg" and r["flush_lag_ms"]:
                m["ms"].append(float(r["flush_lag_ms"]))
    for name in sorted(members, key=lambda n: (n == "tandem_relay", n)):
        m = members[name]
        allv = [v for run in m["status"].values() for _, v in run]
        ends = [sorted(run)[-1][1] for run in m["status"].values() if run]
        trends = []
        for run in m["status"].values():
            v = [x for _, x in sorted(run)]
            if len(v) >= 3:
                t = len(v) // 3
                trends.append(statistics.mean(v[-t:]) - statistics.mean(v[:t]))
        ms = m["ms"]
        print(f"| {c} | {name} | {kb(max(allv) if allv else None)} | {kb(max(ends) if ends else None)} | "
              f"{'—' if not trends else f'{statistics.median(trends) / 1024:+,.0f}'} | "
              f"{fmt(med(ms), 2)} | {fmt(max(ms) if ms else None, 2)} | {len(allv) or len(ms)} |")
EOF
)
RUN_LIST=$(python3 - "$RUNS" <<'EOF'
import csv, sys
print("| round | configuration | TPS | latency avg ms | transactions | load before | steal µs/txn | machine busy % | ours % | others % | our CPU µs/txn | disk flushes/s | ms per flush | relay CPU % of a core | synchronous_standby_names |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    try:
        cpt = f"{float(r['ours_cpu_s']) * 1e6 / float(r['txns']):.0f}"
    except (ValueError, ZeroDivisionError):
        cpt = "—"
    print(f"| {r['round']} | {r['config']} | {float(r['tps']):,.0f} | {r['latency_ms']} | {r['txns']} | {r['load1']} | "
          f"{r['steal_us_per_txn']} | {r['busy_pct']} | {r['ours_pct']} | {r['others_pct']} | {cpt} | {r['flushes_per_s']} | {r['ms_per_flush']} | {r['relay_cpu_pct']} | `{r['names']}` |")
EOF
)
{
    echo "# Physical replication benchmark: the WAL relay in the commit quorum"
    echo
    echo "Written by \`bench/physical.sh\` (issue #15). pgbench TPC-B \`-M prepared -c $CLIENTS -j $THREADS -T $DURATION\`"
    echo "on the primary (scale $SCALE), $ROUNDS interleaved rounds (the configuration order rotates per"
    echo "round). **Everything runs on this one machine with $(nproc) cores**: pgbench, the primary, both standbys,"
    echo "the relay (\`tandem replicator\`, $BIN_DESC, and its \`pg_receivewal\`), all on the same disk."
    echo "A real deployment puts each member on its own host and adds network round trips; here the"
    echo "members compete with the primary for CPU and for the disk's flushes instead."
    echo
    echo "## Machine"
    echo
    echo "$MACHINE"
    echo "- disk: $(df -hT "$WORK" | awk 'NR == 2 {print $2 " on " $1}') (primary, standbys and relay WAL on it)"
    echo
    echo "## Results"
    echo
    echo "$TABLES"
    echo
    echo "Every run:"
    echo
    echo "$RUN_LIST"
    echo
    echo "- steal µs/txn: CPU time the hypervisor gave to other guests during the run, per transaction"
    echo "  (from \`/proc/stat\`); machine busy %: user+system CPU of the whole machine over the run"
    echo "  (100% = both cores); ours %: the part used by this benchmark's processes (servers and their"
    echo "  sessions, relay, pgbench); others %: the rest, i.e. other work on this shared machine (builds,"
    echo "  tests) competing with the benchmark during the run."
    echo "- disk flushes/s and ms per flush: flush (cache-flush) requests the disk ($DISK) completed and the"
    echo "  average time each took (\`/proc/diskstats\`): every fsync/fdatasync of the primary, the standbys"
    echo "  and the relay ends up as one of these. relay CPU: user+system CPU of \`tandem replicator\` and"
    echo "  its \`pg_receivewal\` during the run (— when the relay was stopped)."
    [[ -n $RELAY_SET_NAMES ]] && echo "- The relay, started with \`--mode sync --sync-quorum 1\`, set \`synchronous_standby_names\` to \`$RELAY_SET_NAMES\` itself."
    echo
    echo "## Syscalls: pg_receivewal vs a standby's walreceiver"
    echo
    echo "$SYSCALL_MD"
    echo
    echo "## Setup and exact commands"
    echo
    echo "- PostgreSQL settings (primary; the standbys get the same file from pg_basebackup): $(grep -A30 '^# --- tandem bench' "$WORK/primary/postgresql.conf" | grep -v '^#' | grep . | grep -v -E '^port|unix_socket' | sed 's/ *= */=/' | paste -sd, | sed 's/,/, /g'); everything else default."
    echo "- Standbys: \`tandem replica add sN --from postgres://postgres@127.0.0.1:PRIMARY/postgres --data-dir DIR --port PORT --relay RELAYDIR/wal --no-start\`, then \`pg_ctl start\`."
    echo "- Before every run: the configuration's processes started or stopped, \`synchronous_standby_names = ''\`"
    echo "  while they came and went, \`VACUUM pgbench_branches, pgbench_tellers; TRUNCATE pgbench_history;"
    echo "  CHECKPOINT\`, every member streaming and within 64 kB of the primary, then the configuration's"
    echo "  \`synchronous_standby_names\` (ALTER SYSTEM + reload)."
    echo
    echo '```'
    printf '%s\n' "${COMMANDS[@]}" | awk '!seen[$0]++'
    echo '```'
} >"$OUT"
log "wrote $OUT"
