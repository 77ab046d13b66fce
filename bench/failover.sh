#!/usr/bin/env bash
# Failover benchmark (issue #17): kill -9 of the primary's postmaster under load, through the
# proxy, in sync and in async mode; writes bench/results/failover-<date>-<HHMM>.md.
#
# Every round is a fresh Tandem HA cluster on this machine (bench/ha_cluster.sh), assembled as
# tests/src/ha.rs does: primary pg1 (a copy of one initdb + `pgbench -i` template), standbys s1
# and s2 made by `tandem replica add` (s1 reads the relay's WAL by path, s2 over HTTP), the WAL
# relay (`tandem replicator --replication physical --mode sync|async`), three witnesses and the
# proxy following the group. Load through the proxy: pgbench TPC-B (-c $CLIENTS, restarted whenever
# its clients abort) and a writer (bench/failover_writer.py) that inserts unique ids and
# records every outcome with timestamps and the server that committed it. After $LOAD_SECONDS
# s, kill -9 of pg1's postmaster; then, per round:
#   - kill -> first acknowledged write through the proxy committed by the new primary;
#   - the group's history: kill -> primary declared failed, each failover phase, publication;
#   - lost writes: every acknowledged id must be on the new primary (sync mode: none may be
#     missing; async mode: the acknowledged-but-missing ids are the loss window), together
#     with each member's lag in the primary's pg_stat_replication just before the kill and
#     the relay's last /status before it.
# A round without a new primary, or without a write through the proxy, within
# $FAILOVER_LIMIT s of the kill is recorded as failed with the reason (the group's operation
# and the witnesses' warnings), its logs are kept, and the run goes on.
#
# Usage: bench/failover.sh          (as root; see bench/README.md)
# Knobs: ROUNDS=20 MODES="sync async" LOAD_SECONDS=8 AFTER_SECONDS=3 FAILOVER_LIMIT=30
#   CLIENTS=8 THREADS=2 SCALE=8 WRITERS=2 KILL=postmaster (or server: the postmaster and all
#   its children at once) MAX_LOAD=4 LOAD_WAIT=0 WITNESS_ARGS= PROXY_ARGS= RELAY_ARGS=
#   TANDEM_BIN=<binary; default: cargo build --release> SKIP_BUILD=0 KEEP_WORK=0
#   LOGDIR=<where failed rounds' logs are kept> OUT=<file>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# The knobs as given, before any is made an array (arrays are not exported).
INVOCATION="$(env | grep -E '^(ROUNDS|MODES|LOAD_SECONDS|AFTER_SECONDS|FAILOVER_LIMIT|CLIENTS|THREADS|SCALE|WRITERS|KILL|MAX_LOAD|LOAD_WAIT|WITNESS_ARGS|PROXY_ARGS|RELAY_ARGS|TANDEM_BIN|SKIP_BUILD)=' | sort | paste -sd' ') bench/failover.sh"
INVOCATION=${INVOCATION# }
source "$(dirname "$0")/ha_cluster.sh"

ROUNDS=${ROUNDS:-20}
MODES=(${MODES:-sync async})
LOAD_SECONDS=${LOAD_SECONDS:-8}
AFTER_SECONDS=${AFTER_SECONDS:-3}
FAILOVER_LIMIT=${FAILOVER_LIMIT:-30}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-8}
WRITERS=${WRITERS:-2}
KILL=${KILL:-postmaster}
MAX_LOAD=${MAX_LOAD:-4}
# The benchmark's own load (three servers, pgbench -c 8, the writer) keeps the one-minute
# average near 10 on two cores, so by default nothing waits for it; each round records how
# much of the machine other work took instead (see "others' CPU").
LOAD_WAIT=${LOAD_WAIT:-0}
STAMP=$(date +%Y-%m-%d-%H%M)
OUT=${OUT:-$BENCH_DIR/results/failover-$STAMP.md}
LOGDIR=${LOGDIR:-/tmp/tandem-bench-failover-logs-$STAMP}
[[ $KILL == postmaster || $KILL == server ]] || die "KILL must be postmaster or server"

python3 -c 'import psycopg' 2>/dev/null || die "the writer needs psycopg 3: python3 -m pip install 'psycopg[binary]'"
UPTIME_START=$(uptime | sed 's/^ *//')
bench_init failover
ha_binary
MACHINE=$(machine_info)
mkdir -p "$WORK/rounds"
cp "$BENCH_DIR/failover_writer.py" "$WORK/writer.py"

# --- the template: initdb and pgbench -i once; every round's pg1 is a copy --------------
ha_template "$SCALE"

# --- helpers -------------------------------------------------------------------------------
cat >"$WORK/wait_failover.py" <<'EOF'
"""Waits for the failover after the kill: the group publishes a new primary (epoch >= 2, no
operation in progress), then the writer has an acknowledgement committed by it. Saves every
witness's last view to STATE_JSON. Exit 0: both; 1: no new primary in time; 2: a new primary
but no write through the proxy in time. The reason is printed."""
import json, sys, time, urllib.request
limit, kill, writer_tsv, state_json = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
ports = sys.argv[5:]
deadline = kill + limit

def views():
    out = {}
    for p in ports:
        try:
            out[p] = json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/v1/cluster", timeout=0.5))
        except Exception as e:
            out[p] = {"error": str(e)}
    return out

def done(v):
    s = v.get("state") or {}
    return s.get("epoch", 0) >= 2 and s.get("operation") is None and s.get("primary") not in (None, "pg1")

def first_ack(node):
    try:
        for line in open(writer_tsv):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 5 and f[3] == "ack" and f[4] == node and float(f[1]) >= kill:
                return float(f[1])
    except OSError:
        pass
    return None

published, primary, last = None, None, {}
while time.time() < deadline:
    last = views()
    for v in last.values():
        if done(v):
            published, primary = time.time(), v["state"]["primary"]
            break
    if published:
        break
    time.sleep(0.05)
if not published:
    json.dump(last, open(state_json, "w"), indent=1)
    ops = [(p, (v.get("state") or {}).get("operation"), (v.get("state") or {}).get("epoch"), v.get("error")) for p, v in last.items()]
    print(f"no new primary within {limit:.0f} s of the kill; witnesses' view (port, operation, epoch, error): {json.dumps(ops)}")
    sys.exit(1)
while time.time() < deadline:
    if first_ack(primary):
        json.dump(views(), open(state_json, "w"), indent=1)
        print(f"new primary {primary}")
        sys.exit(0)
    time.sleep(0.05)
json.dump(views(), open(state_json, "w"), indent=1)
print(f"{primary} published {published - kill:.1f} s after the kill, but no write through the proxy committed by it within {limit:.0f} s of the kill")
sys.exit(2)
EOF

cat >"$WORK/sampler.py" <<'EOF'
"""The relay's GET /status every 200 ms: t, relay lag_bytes, s1 lag_bytes, s2 lag_bytes,
states (one TSV line per sample)."""
import json, sys, time, urllib.request
out, url = sys.argv[1], sys.argv[2]
with open(out, "w", buffering=1) as f:
    f.write("t\trelay\ts1\ts2\tstates\n")
    while True:
        t = time.time()
        try:
            s = json.load(urllib.request.urlopen(url, timeout=1))
            lag = {m["name"]: m.get("lag_bytes") for m in [s["relay"]] + s["standbys"]}
            st = ",".join(f"{m['name']}:{m['state']}/{m.get('sync_state') or '-'}" for m in [s["relay"]] + s["standbys"])
            relay = s["relay"]["name"]
            f.write(f"{t:.3f}\t{lag.get(relay)}\t{lag.get('s1')}\t{lag.get('s2')}\t{st}\n")
        except Exception as e:
            f.write(f"{t:.3f}\t\t\t\terror: {' '.join(str(e).split())[:120]}\n")
        time.sleep(max(0.0, 0.2 - (time.time() - t)))
EOF

cat >"$WORK/analyze_round.py" <<'EOF'
"""One round's numbers from its files: writes RESULT_JSON.
Usage: analyze_round.py RESULT_JSON ROUND_DIR KEY=VALUE..."""
import glob, json, os, re, statistics, sys
out, d = sys.argv[1], sys.argv[2]
r = dict(a.split("=", 1) for a in sys.argv[3:])
kill = float(r["kill"]) if r.get("kill") else None
res = {k: r[k] for k in ("mode", "round", "status", "reason", "load1", "load_after", "quorum_new", "quorum_after_relay") if k in r}
res["teardown_at"] = float(r["teardown_at"]) if r.get("teardown_at") else None
res["kill"] = kill
if r.get("kill_returned") and kill:
    res["kill_call_ms"] = (float(r["kill_returned"]) - kill) * 1000
if r.get("cpu_pre"):
    ours, others, _, steal = r["cpu_pre"].split()
    res.update(cpu_ours_pct=float(ours), cpu_others_pct=float(others), steal_pct=float(steal))
if r.get("fo_busy"):
    res.update(failover_busy_pct=float(r["fo_busy"]), failover_steal_pct=float(r["fo_steal"]))

# The writer's outcomes.
acks, fails, unknown, connfail = [], [], [], 0
codes = {}
try:
    for line in open(os.path.join(d, "writer.tsv")):
        f = line.rstrip("\n").split("\t")
        if len(f) < 5:
            continue
        t0, t1, kind, rest = float(f[0]), float(f[1]), f[3], f[4]
        if kind == "connfail":
            connfail += 1
            if kill and t1 >= kill:
                codes["no session (connect failed)"] = codes.get("no session (connect failed)", 0) + 1
            continue
        i = int(f[2])
        if kind == "ack":
            acks.append((i, t0, t1, rest))
        elif kind == "fail":
            fails.append((i, t0, t1, rest))
        else:
            unknown.append((i, t0, t1, rest))
        if kind != "ack" and kill and t1 >= kill:
            key = f"{kind} {rest.split(' ')[0] or rest[:40]}"
            codes[key] = codes.get(key, 0) + 1
except OSError:
    pass
res.update(acked=len(acks), failed=len(fails), unknown=len(unknown), connfail=connfail, errors_after_kill=codes)

# The group's view.
state, view = {}, {}
try:
    views = json.load(open(os.path.join(d, "state.json")))
    for v in views.values():
        s = v.get("state") or {}
        if s.get("epoch", 0) >= (state.get("epoch") or 0) and s:
            state, view = s, v
except (OSError, ValueError):
    pass
res["epoch"] = state.get("epoch")
new = state.get("primary") if state.get("primary") != "pg1" else None
res["new_primary"] = new
hist = state.get("history") or []
def hist_at(pred):
    for h in reversed(hist):
        if pred(h.get("event", "")):
            return h
    return None
declared = hist_at(lambda e: e.startswith("primary failed"))
started = hist_at(lambda e: e.startswith("failover started"))
done = hist_at(lambda e: e.startswith("failover: "))
blocked = [h["event"] for h in hist if h.get("event", "").startswith("failover blocked")]
res["history"] = [f"{h.get('at_ms', 0) / 1000 - kill:+.3f} s: {h.get('event')}" if kill else h.get("event") for h in hist
                  if not kill or h.get("at_ms", 0) / 1000 >= kill - 1]
res["blocked"] = blocked
if kill and declared:
    res["detect_ms"] = declared["at_ms"] - kill * 1000
if kill and started:
    res["start_ms"] = started["at_ms"] - kill * 1000
if done:
    res["failover_event"] = done["event"]
    for name, ms in re.findall(r"(\w+) (\d+) ms", done["event"]):
        res[f"phase_{name}"] = int(ms)
    if kill:
        res["published_ms"] = done["at_ms"] - kill * 1000

# Kill -> first write committed by the new primary.
if kill and new:
    after = sorted(t1 for (_, _, t1, node) in acks if node == new and t1 >= kill)
    if after:
        res["first_write_ms"] = (after[0] - kill) * 1000
        if "published_ms" in res:
            res["publish_to_write_ms"] = res["first_write_ms"] - res["published_ms"]
old_before = [t1 for (_, _, t1, node) in acks if node == "pg1" and (not kill or t1 < kill)]
res["old_acks_after_kill"] = sum(1 for (_, _, t1, node) in acks if node == "pg1" and kill and t1 >= kill)
if r.get("kill_returned"):
    kr = float(r["kill_returned"])
    res["old_acks_after_kill_returned"] = sum(1 for (_, _, t1, node) in acks if node == "pg1" and t1 >= kr)
    res["old_acks_sent_after_kill_returned"] = sum(1 for (_, t0, _, node) in acks if node == "pg1" and t0 >= kr)
    late = [t1 for (_, _, t1, node) in acks if node == "pg1" and t1 >= kr]
    if late:
        res["old_last_ack_ms"] = (max(late) - kill) * 1000
if kill and old_before:
    res["last_old_ack_before_kill_ms"] = (max(old_before) - kill) * 1000
    window = [t for t in old_before if t >= kill - 5]
    res["acks_per_s_before_kill"] = len(window) / 5
other_nodes = sorted({node for (_, _, _, node) in acks if node not in ("pg1", new)})
if other_nodes:
    res["acks_from_other_nodes"] = other_nodes

# Lost writes: every acknowledged id on the new primary.
ids_path = os.path.join(d, "ids.txt")
if os.path.exists(ids_path):
    have = set()
    for line in open(ids_path):
        line = line.strip()
        if line:
            have.add(int(line))
    res["rows_on_new_primary"] = len(have)
    missing = [(i, t1, node) for (i, _, t1, node) in acks if i not in have]
    res["missing"] = len(missing)
    res["missing_ids"] = [i for i, _, _ in missing][:30]
    if missing and kill:
        res["missing_window_ms"] = [min(t for _, t, _ in missing) * 1000 - kill * 1000,
                                    max(t for _, t, _ in missing) * 1000 - kill * 1000]
        res["missing_nodes"] = sorted({n for _, _, n in missing})
    res["failed_present"] = sum(1 for (i, *_rest) in fails if i in have)
    res["unknown_present"] = sum(1 for (i, *_rest) in unknown if i in have)

# Lag just before the kill: the primary's pg_stat_replication (bytes behind its current
# position: sent, flushed, replayed) and the relay's last /status.
try:
    lag = {}
    for line in open(os.path.join(d, "prekill.tsv")):
        f = line.rstrip("\n").split("|")
        if len(f) >= 6:
            lag[f[0]] = {"state": f[1], "sync_state": f[2], "sent": f[3], "flush": f[4], "replay": f[5]}
    res["prekill_lag"] = lag
except OSError:
    pass
try:
    last = None
    for line in open(os.path.join(d, "samples.tsv")):
        f = line.rstrip("\n").split("\t")
        if f[0] == "t" or len(f) < 5 or f[1] == "":
            continue
        if kill and float(f[0]) > kill:
            break
        last = f
    if last and kill:
        res["status_before_kill"] = {"age_ms": (kill - float(last[0])) * 1000, "relay": last[1], "s1": last[2],
                                     "s2": last[3], "states": last[4]}
except OSError:
    pass

# pgbench: TPS before the kill (median of the first run's per-second progress lines) and how
# often it was restarted.
runs = sorted(glob.glob(os.path.join(d, "pgbench-*.log")), key=lambda p: int(re.findall(r"(\d+)\.log$", p)[0]))
res["pgbench_runs"] = len(runs)
if runs:
    tps = [float(m) for m in re.findall(r"^progress: [\d.]+ s, ([\d.]+) tps", open(runs[0]).read(), re.M)]
    if len(tps) > 2:
        res["pgbench_tps_before_kill"] = statistics.median(tps[1:-1])

# The old primary's processes after the kill.
if r.get("old_left"):
    res["old_processes_left"] = r["old_left"]
json.dump(res, open(out, "w"), indent=1)
EOF

TICKS=$(getconf CLK_TCK)

# --- one round -------------------------------------------------------------------------------
RUNS_DIR="$WORK/rounds"
COMMANDS=()
FAILED_LOGS=()

round() { # MODE ROUND
    local mode=$1 n=$2
    local rn="$mode-$n" R="$WORK/$mode-$n"
    local pids_base=${#BENCH_PIDS[@]} pgdata_base=${#BENCH_PGDATA[@]}
    local status=ok reason="" kill_t="" kill_t1="" load_before load_after old_children="" old_left=""
    local cpu_pre="" fo_busy="" fo_steal="" quorum_new="" quorum_after_relay=""
    mkdir -p "$R"
    chown "$PG_USER": "$R"
    ((LOAD_WAIT > 0)) && wait_low_load "$MAX_LOAD" "$LOAD_WAIT"
    load_before=$(load1)
    log "round $n $mode: setting up (load $load_before)"

    local writer_pid="" sampler_pid="" loop_pid="" p d
    if ! ha_start "$R" "$mode"; then
        status=setup_failed
        reason=$HA_REASON
        log "round $n $mode: setup failed: $reason"
    else
        ((n == 1)) && COMMANDS+=("${HA_COMMANDS[@]}")
        # Load: the writer, pgbench (restarted whenever its clients abort), the relay sampler.
        python3 "$WORK/writer.py" "host=127.0.0.1 port=$HA_PROXY_PORT user=postgres dbname=postgres connect_timeout=2" \
            "$R/writer.tsv" "$WRITERS" 2>"$R/writer.err" &
        writer_pid=$!
        BENCH_PIDS+=("$writer_pid")
        python3 "$WORK/sampler.py" "$R/samples.tsv" "http://127.0.0.1:$HA_RELAY_PORT/status" 2>/dev/null &
        sampler_pid=$!
        BENCH_PIDS+=("$sampler_pid")
        (
            k=0
            while [[ ! -e $R/stop-load ]]; do
                k=$((k + 1))
                pgbench -n -c "$CLIENTS" -j "$THREADS" -T 600 -P 1 -h 127.0.0.1 -p "$HA_PROXY_PORT" -U postgres postgres \
                    >"$R/pgbench-$k.log" 2>&1 || true
                sleep 0.2
            done
        ) &
        loop_pid=$!
        BENCH_PIDS+=("$loop_pid")
        ((n == 1)) && [[ $mode == "${MODES[0]}" ]] && COMMANDS+=("load: pgbench -n -c $CLIENTS -j $THREADS -T 600 -P 1 -h 127.0.0.1 -p PROXY -U postgres postgres (TPC-B, scale $SCALE; restarted 0.2 s after it exits) + python3 bench/failover_writer.py 'host=127.0.0.1 port=PROXY user=postgres dbname=postgres connect_timeout=2' OUT $WRITERS")
        python3 "$BENCH_DIR/cpu_split.py" start "$R/cpu.json"
        sleep "$LOAD_SECONDS"

        local pm
        pm=$(head -1 "$R/pg1/postmaster.pid")
        old_children=$(pgrep -P "$pm" | paste -sd' ' || true)
        psql -X -qAt -h 127.0.0.1 -p "$HA_P_PORT" -U postgres -d postgres -c "SELECT application_name, state, sync_state,
            pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn), pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn),
            pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication" >"$R/prekill.tsv" 2>/dev/null || true
        cpu_pre=$(python3 "$BENCH_DIR/cpu_split.py" end "$R/cpu.json" $$ "$pm" $(head -qn1 "$R/s1/postmaster.pid" "$R/s2/postmaster.pid" 2>/dev/null) || true)
        local bs0 bs1
        bs0=$(busy_steal)
        # Bash's own clock (no fork) right before and after the signal.
        kill_t=$EPOCHREALTIME
        if [[ $KILL == server ]]; then
            kill -KILL "$pm" $old_children 2>/dev/null || true
        else
            kill -KILL "$pm"
        fi
        kill_t1=$EPOCHREALTIME
        log "round $n $mode: kill -9 of pg1's $KILL ($pm)"
        local out rc=0
        out=$(python3 "$WORK/wait_failover.py" "$FAILOVER_LIMIT" "$kill_t" "$R/writer.tsv" "$R/state.json" "${HA_W_PORTS[@]}") || rc=$?
        bs1=$(busy_steal)
        read -r fo_busy fo_steal <<<"$(awk -v a="$bs0" -v b="$bs1" -v t0="$kill_t" -v t1="$EPOCHREALTIME" -v hz="$TICKS" -v n="$(nproc)" 'BEGIN {
            split(a, x, " "); split(b, y, " "); d = (t1 - t0) * hz * n; printf "%.0f %.1f", (y[1] - x[1]) / d * 100, (y[2] - x[2]) / d * 100 }')"
        if ((rc != 0)); then
            status=failed
            reason=$out
            log "round $n $mode: FAILED: $reason"
        else
            sleep "$AFTER_SECONDS"
        fi
        # Stop the load: no new pgbench, the running one interrupted, the writer last.
        touch "$R/stop-load"
        kill -INT $(pgrep -P "$loop_pid" -x pgbench || true) 2>/dev/null || true
        wait "$loop_pid" 2>/dev/null || true
        kill -TERM "$writer_pid" 2>/dev/null || true
        wait "$writer_pid" 2>/dev/null || true
        kill -TERM "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
        # Which ids the new primary has.
        local newp port
        newp=$(jq -r '[.[] | .state? // empty] | max_by(.epoch) | .primary // empty' "$R/state.json" 2>/dev/null || true)
        case $newp in s1) port=$HA_S1_PORT ;; s2) port=$HA_S2_PORT ;; *) port="" ;; esac
        if [[ -n $port ]]; then
            psql -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SELECT id FROM failover_writes' >"$R/ids.txt" 2>"$R/ids.err" \
                || { rm -f "$R/ids.txt"; [[ $status == ok ]] && { status=failed; reason="could not read the ids on $newp: $(head -2 "$R/ids.err")"; }; }
        fi
        for p in $pm $old_children; do
            if kill -0 "$p" 2>/dev/null; then old_left+="$p "; fi
        done
        # The new primary's commit quorum as the group set it, and after the relay stops (it
        # leaves the quorum on SIGTERM): the relay goes first in the teardown.
        if [[ -n $port ]]; then
            quorum_new=$(psql -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SHOW synchronous_standby_names' 2>/dev/null || true)
            kill -TERM "$HA_RELAY_PID" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$HA_RELAY_PID" 2>/dev/null || break; sleep 0.1; done
            quorum_after_relay=$(psql -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SHOW synchronous_standby_names' 2>/dev/null || true)
        fi
    fi
    load_after=$(load1)
    local teardown_at=$EPOCHREALTIME

    # Tear the round down: our processes (and theirs), then the servers; pg1's orphans last.
    ha_stop "$pids_base" "$pgdata_base"
    for p in $old_children; do kill -KILL "$p" 2>/dev/null || true; done

    python3 "$WORK/analyze_round.py" "$RUNS_DIR/$rn.json" "$R" mode="$mode" round="$n" status="$status" reason="$reason" \
        load1="$load_before" load_after="$load_after" kill="$kill_t" kill_returned="$kill_t1" old_left="$old_left" \
        teardown_at="$teardown_at" cpu_pre="$cpu_pre" fo_busy="$fo_busy" fo_steal="$fo_steal" quorum_new="$quorum_new" quorum_after_relay="$quorum_after_relay" \
        || log "round $n $mode: analysis failed"
    # Every round's numbers also outside the work directory, so a report can be made again.
    mkdir -p "$LOGDIR/rounds"
    cp "$RUNS_DIR/$rn.json" "$LOGDIR/rounds/" 2>/dev/null || true
    if [[ $status == ok ]]; then
        log "round $n $mode: $(jq -r '"new primary \(.new_primary), kill → first write \(.first_write_ms // 0 | round) ms; \(.failover_event // ""); missing \(.missing // "?") of \(.acked) acked"' "$RUNS_DIR/$rn.json" 2>/dev/null)"
    fi
    if [[ $status != ok || ${KEEP_WORK:-0} == 1 ]]; then
        # Keep the logs (not the data directories) for a post-mortem.
        mkdir -p "$LOGDIR/$rn"
        (cd "$R" && cp -a ./*.log ./*.tsv ./*.json ./*.txt ./*.err "$LOGDIR/$rn/" 2>/dev/null) || true
        for d in pg1 s1 s2; do [[ -f $R/$d/postgresql.auto.conf ]] && cp "$R/$d/postgresql.auto.conf" "$LOGDIR/$rn/$d.auto.conf"; done
        [[ $status != ok ]] && FAILED_LOGS+=("$rn")
    fi
    rm -rf "$R"
}

# --- rounds: the modes alternate (the order rotating), so both see the same machine -----------
nm=${#MODES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((j = 0; j < nm; j++)); do
        round "${MODES[$(((j + r - 1) % nm))]}" "$r"
    done
done
UPTIME_END=$(uptime | sed 's/^ *//')

# --- results -------------------------------------------------------------------------------
results_path
KILLED="pg1's postmaster"
[[ $KILL == server ]] && KILLED="pg1's postmaster and all its children"
REPORT=$(python3 - "$LOGDIR/rounds" "$LOGDIR" "${MODES[*]}" "$KILLED" <<'EOF'
import datetime, glob, json, math, os, re, statistics, sys
runs_dir, logdir, modes, killed_what = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4]
rows = [json.load(open(p)) for p in glob.glob(os.path.join(runs_dir, "*.json"))]
rows.sort(key=lambda r: (int(r["round"]), modes.index(r["mode"]) if r["mode"] in modes else 9))

def pct(v, q):
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    v = sorted(v)
    return v[max(0, math.ceil(q * len(v)) - 1)]
def s(ms, d=2):
    return "—" if ms is None else f"{ms / 1000:.{d}f} s"
def m(v):
    return statistics.median(v) if v else None
def msf(v):
    return "—" if v is None else f"{v:,.0f} ms"

print("## Summary")
print()
print(f"kill → first write: from `kill -9` of {killed_what} to the first insert through the proxy")
print("acknowledged *and committed by the new primary* (the writer's `RETURNING current_setting('cluster_name')`).")
print("Percentiles by nearest rank (p95 of 20 = the 19th value).")
print()
print("| mode | kills | failed rounds | kill → first write: min | median | p95 | max | goal (median ≤ 3 s, p95 ≤ 5 s) | acked writes | acknowledged but missing |")
print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
summary = {}
for mode in modes:
    rs = [r for r in rows if r["mode"] == mode]
    killed = [r for r in rs if r.get("kill")]
    ok = [r for r in rs if r["status"] == "ok" and r.get("first_write_ms") is not None]
    failed = [r for r in rs if r["status"] != "ok"]
    fw = [r["first_write_ms"] for r in ok]
    acked = sum(r.get("acked", 0) for r in ok)
    missing = sum(r.get("missing", 0) for r in ok)
    lossy = sum(1 for r in ok if r.get("missing"))
    goal = "—"
    if fw:
        med, p95 = m(fw), pct(fw, 0.95)
        goal = ("met" if med <= 3000 and p95 <= 5000 else "**not met**") + f" ({med / 1000:.2f} s / {p95 / 1000:.2f} s)"
        if failed:
            goal += f"; {len(failed)} failed round(s) not in the percentiles"
    summary[mode] = (fw, ok)
    print(f"| {mode} | {len(killed)} | {len(failed)} | {s(min(fw) if fw else None)} | **{s(m(fw))}** | **{s(pct(fw, 0.95) if fw else None)}** | "
          f"{s(max(fw) if fw else None)} | {goal} | {acked:,} | **{missing}** in {lossy} of {len(ok)} rounds |")
print()
print("Where the time goes (medians over the successful rounds; times from the kill on the same")
print("wall clock as the witnesses' history):")
print()
print("| mode | kill → declared failed | kill → failover started | fencing | catching_up | promoting | failover total | kill → published | published → first write | kill → first write |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode in modes:
    fw, ok = summary[mode]
    col = lambda k: m([r[k] for r in ok if r.get(k) is not None])
    print(f"| {mode} | {msf(col('detect_ms'))} | {msf(col('start_ms'))} | {msf(col('phase_fencing'))} | {msf(col('phase_catching_up'))} | "
          f"{msf(col('phase_promoting'))} | {msf(col('phase_total'))} | {msf(col('published_ms'))} | {msf(col('publish_to_write_ms'))} | {msf(col('first_write_ms'))} |")
print()
fw_all = {mode: m(summary[mode][0]) for mode in modes}
parts = [f"Tandem {mode} {fw_all[mode] / 1000:.1f} s" for mode in modes if fw_all[mode] is not None]
print("**Compared with the anchors (median time without writes after a primary failure):** " + ", ".join(parts) +
      " — against Patroni 4.1.5 + etcd on this kind of machine 26.4 s with its defaults and 20.2 s at its smallest timings"
      " (issue #17), pg_auto_failover ≈ 20 s + 30 s, repmgr ≈ 60 s, Aurora 10–16 s (vendors' and the issue's figures,"
      " not measured here).")
print()

# Loss window (async) and lag at the kill.
print("## Writes lost")
print()
for mode in modes:
    fw, ok = summary[mode]
    lossy = [r for r in ok if r.get("missing")]
    fp = sum(r.get("failed_present", 0) for r in ok)
    up = sum(r.get("unknown_present", 0) for r in ok)
    un = sum(r.get("unknown", 0) for r in ok)
    oa = sum(r.get("old_acks_after_kill", 0) for r in ok)
    print(f"- **{mode}**: {sum(r.get('missing', 0) for r in ok)} acknowledged inserts missing on the new primary in "
          f"{len(lossy)} of {len(ok)} rounds; {fp} inserts that failed with an ERROR are there (must be 0); {up} of {un} "
          f"inserts of unknown outcome are there; {oa} acknowledgements from pg1 arrived after the kill.")
    for r in lossy:
        w = r.get("missing_window_ms") or [0, 0]
        print(f"  - round {r['round']}: {r['missing']} missing (ids {r.get('missing_ids')}), acknowledged "
              f"{w[0]:+.0f} … {w[1]:+.0f} ms from the kill by {', '.join(r.get('missing_nodes', []))}; new primary {r.get('new_primary')}")
print()
print("Lag at the kill: bytes of WAL each member lacked, from the primary's `pg_stat_replication` read just")
print("before the kill (current position − flushed; for standbys also − replayed), median and max over the rounds;")
print("and the relay's last `GET /status` before the kill (`lag_bytes`: relay − flushed, standbys − replayed).")
print()
print("| mode | member | flushed lag median | max | replayed lag median | max | relay /status lag median | max | /status age median |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
def b(v):
    return "—" if v is None else f"{v:,.0f} B"
for mode in modes:
    fw, ok = summary[mode]
    for member, skey in (("tandem_relay", "relay"), ("s1", "s1"), ("s2", "s2")):
        fl = [num(r.get("prekill_lag", {}).get(member, {}).get("flush")) for r in ok]
        rp = [num(r.get("prekill_lag", {}).get(member, {}).get("replay")) for r in ok]
        st = [num(r.get("status_before_kill", {}).get(skey)) for r in ok]
        age = [num(r.get("status_before_kill", {}).get("age_ms")) for r in ok]
        fl, rp, st, age = ([x for x in v if x is not None] for v in (fl, rp, st, age))
        print(f"| {mode} | {member} | {b(m(fl))} | {b(max(fl) if fl else None)} | {b(m(rp))} | {b(max(rp) if rp else None)} | "
              f"{b(m(st))} | {b(max(st) if st else None)} | {msf(m(age))} |")
print()

print("## What else the rounds showed")
print()
def blocked_in(r):
    return [h.split(": ", 1)[1] for h in r.get("history", []) if "failover blocked" in h]
for mode in modes:
    rs = [r for r in rows if r["mode"] == mode and r.get("kill")]
    bl = [r for r in rs if blocked_in(r)]
    reasons = {}
    for r in bl:
        for b in blocked_in(r):
            key = re.sub(r"\d+", "N", b)
            reasons[key] = reasons.get(key, 0) + 1
    print(f"- **{mode}**: the failover was blocked for a while (then went on) in {len(bl)} of {len(rs)} rounds"
          + (": " + "; ".join(f"`{k}` ×{v}" for k, v in reasons.items()) if reasons else "") + ".")
    if bl:
        ok_bl = [r["first_write_ms"] for r in bl if r.get("first_write_ms") is not None]
        ok_nb = [r["first_write_ms"] for r in rs if not blocked_in(r) and r.get("first_write_ms") is not None]
        print(f"  Median kill → first write with such a block {s(m(ok_bl))} ({len(ok_bl)} rounds), without {s(m(ok_nb))} ({len(ok_nb)} rounds).")
    qn = {}
    qa = {}
    for r in rs:
        if r.get("quorum_new") is not None and r.get("new_primary"):
            k = r["quorum_new"].replace(r["new_primary"], "NEW").replace("s1", "OTHER").replace("s2", "OTHER") if r["quorum_new"] else "''"
            qn[k] = qn.get(k, 0) + 1
            a = r.get("quorum_after_relay", "")
            names_new = f'"{r["new_primary"]}"' in a
            k = (a.replace(r["new_primary"], "NEW").replace("s1", "OTHER").replace("s2", "OTHER") if a else "''") + (" (names the primary itself)" if names_new else "")
            qa[k] = qa.get(k, 0) + 1
    if qn:
        print(f"  The new primary's `synchronous_standby_names` after the failover: " + ", ".join(f"`{k}` ×{v}" for k, v in qn.items())
              + "; after the relay then stopped (SIGTERM, it leaves the quorum): " + ", ".join(f"`{k}` ×{v}" for k, v in qa.items())
              + " (NEW = the new primary, OTHER = the other standby).")
    oa = sum(r.get("old_acks_after_kill_returned", 0) for r in rs)
    osent = sum(r.get("old_acks_sent_after_kill_returned", 0) for r in rs)
    if oa:
        late = [r["old_last_ack_ms"] for r in rs if r.get("old_last_ack_ms") is not None]
        print(f"  {oa} acknowledgements from pg1 arrived after `kill` had returned ({osent} of them for inserts sent after it), in"
              f" {len(late)} rounds, the last {max(late) if late else float('nan'):.0f} ms after the kill: the postmaster was dead, its backends and walsenders"
              " not yet (they exit when they next wait and notice); such a commit is owed like any other and was counted.")
    kc = [r["kill_call_ms"] for r in rs if r.get("kill_call_ms") is not None]
    if kc and max(kc) > 5:
        print(f"  The `kill` itself took up to {max(kc):.0f} ms of wall time (median {m(kc):.1f} ms): the script was not running.")
print()
cpu = [r for r in rows if r.get("cpu_others_pct") is not None]
if cpu:
    print("CPU: during the load before the kill this benchmark's processes used a median "
          f"{m([r['cpu_ours_pct'] for r in cpu]):.0f}% of the machine and other work {m([r['cpu_others_pct'] for r in cpu]):.0f}% "
          f"(max {max(r['cpu_others_pct'] for r in cpu):.0f}%), steal {m([r['steal_pct'] for r in cpu]):.1f}%; from the kill to the first write "
          f"the machine was {m([r['failover_busy_pct'] for r in cpu if r.get('failover_busy_pct') is not None]):.0f}% busy (median; 100% = both cores).")
    print()

print("## Every round")
print()
print("| round | mode | status | load before/after | others' CPU before kill | busy kill → write | kill → declared | fencing / catching_up / promoting (total) | kill → published | kill → first write | new primary | acked | failed / unknown / no session (after kill) | missing | pgbench TPS before | pgbench restarts |")
print("|---:|---|---|---|---:|---:|---:|---|---:|---:|---|---:|---|---:|---:|---:|")
for r in rows:
    ph = "—"
    if r.get("phase_total") is not None:
        ph = f"{r.get('phase_fencing', '?')} / {r.get('phase_catching_up', '?')} / {r.get('phase_promoting', '?')} ({r['phase_total']}) ms"
    errs = r.get("errors_after_kill", {})
    fcount = sum(v for k, v in errs.items() if k.startswith("fail"))
    ucount = sum(v for k, v in errs.items() if k.startswith("unknown"))
    ncount = sum(v for k, v in errs.items() if k.startswith("no session"))
    tps = r.get("pgbench_tps_before_kill")
    oc = "—" if r.get("cpu_others_pct") is None else f"{r['cpu_others_pct']:.0f}%"
    fb = "—" if r.get("failover_busy_pct") is None else f"{r['failover_busy_pct']:.0f}%"
    if blocked_in(r):
        ph += " (blocked)"
    print(f"| {r['round']} | {r['mode']} | {r['status']} | {r.get('load1')} / {r.get('load_after')} | {oc} | {fb} | {msf(r.get('detect_ms'))} | {ph} | "
          f"{msf(r.get('published_ms'))} | {msf(r.get('first_write_ms'))} | {r.get('new_primary') or '—'} | {r.get('acked', 0):,} | "
          f"{fcount} / {ucount} / {ncount} | {r.get('missing', '—')} | {'—' if tps is None else f'{tps:,.0f}'} | {r.get('pgbench_runs', 0)} |")
print()
errs = {}
for r in rows:
    for k, v in r.get("errors_after_kill", {}).items():
        errs.setdefault(r["mode"], {}).setdefault(k, 0)
        errs[r["mode"]][k] += v
print("What the writer saw between the kill and the end of the round (all rounds; `fail` = ERROR, the insert")
print("did not happen; `unknown` = the session broke or timed out; SQLSTATE first):")
print()
for mode in modes:
    e = errs.get(mode, {})
    print(f"- {mode}: " + (", ".join(f"{k} ×{v}" for k, v in sorted(e.items(), key=lambda kv: -kv[1])) or "nothing"))
print()

failed = [r for r in rows if r["status"] != "ok"]
print("## Failed rounds")
print()
if not failed:
    print("None: every round had a new primary and a write through the proxy within the limit.")
for r in failed:
    print(f"### round {r['round']} {r['mode']}: {r['status']}")
    print()
    print(f"Reason: {r.get('reason')}")
    print()
    if r.get("history"):
        print("The group's history around the kill (seconds from the kill):")
        print()
        print("```")
        for h in r["history"]:
            print(h)
        print("```")
        print()
    d = os.path.join(logdir, f"{r['mode']}-{r['round']}")
    lines = []
    for name in ("w1", "w2", "w3"):
        p = os.path.join(d, f"{name}.log")
        if os.path.exists(p):
            for line in open(p, errors="replace"):
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                t = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
                if t and r.get("teardown_at"):
                    at = datetime.datetime.fromisoformat(t.group(1)[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
                    if at >= r["teardown_at"]:
                        break   # the teardown's noise (witnesses stopping one after the other)
                if re.search(r"\b(WARN|ERROR)\b", line):
                    lines.append(f"{name}: {line.rstrip()}")
    if lines:
        print("Witnesses' warnings and errors until the round was torn down (first 40):")
        print()
        print("```")
        for line in lines[:40]:
            print(re.sub(r"\x1b\[[0-9;]*m", "", line)[:400])
        print("```")
        print()
    print(f"Logs kept in `{d}` on the machine that ran it.")
    print()
EOF
) || REPORT="(the report could not be made: every round's numbers are in $LOGDIR/rounds)"
{
    echo "# Failover benchmark: kill -9 of the primary under load, through the proxy"
    echo
    echo "Written by \`bench/failover.sh\` (issue #17). $ROUNDS rounds per mode (${MODES[*]}), the modes alternating;"
    echo "**each round is a fresh cluster on this one machine with $(nproc) cores**: primary pg1, standbys s1, s2"
    echo "(\`tandem replica add\`), the WAL relay (\`tandem replicator --replication physical --mode MODE\`), three"
    echo "witnesses and the proxy ($BIN_DESC, \`$BIN_VERSION\`), all with their default timings. Load through the"
    echo "proxy: pgbench TPC-B \`-c $CLIENTS -j $THREADS\` (scale $SCALE; pgbench's clients abort when their"
    echo "server goes away, so it is restarted 0.2 s after it exits) and the writer (\`bench/failover_writer.py\`,"
    echo "$WRITERS sessions inserting unique ids one at a time, 1 s connect and 5 s statement bound). After"
    echo "$LOAD_SECONDS s of load: \`kill -9\` of pg1's $( [[ $KILL == server ]] && echo "postmaster and all its children" || echo "postmaster (its backends and walsenders then exit on their own when they notice)")."
    echo "The load goes on until $AFTER_SECONDS s after the first write on the new primary; then the writer's"
    echo "acknowledged ids are compared with the new primary's table. A round with no new primary, or no"
    echo "write through the proxy, within $FAILOVER_LIMIT s of the kill counts as failed."
    echo
    ha_machine_section "- The machine is shared: other builds and tests ran during the benchmark; each round's one-minute
  load before its setup and after the failover is in the table below."
    echo
    echo "$REPORT"
    echo
    ha_setup_section
    echo "- Standbys: \`tandem replica add sN --from postgres://postgres@127.0.0.1:PG1/postgres --data-dir DIR --port PORT --relay RELAY --no-start\`"
    echo "  (s1: \`--relay RELAYDIR/wal\`, s2: \`--relay http://127.0.0.1:RELAY_STATUS_PORT\`), then \`pg_ctl start\`."
    echo "- A round starts the load once the relay reported its quorum to the group, s1, s2 and the relay stream,"
    echo "  (sync) the relay set \`synchronous_standby_names\`, and a write passed the proxy."
    echo "- Round 1's commands (ports and directories differ per round):"
    echo
    echo '```'
    printf '%s\n' "${COMMANDS[@]}" | sed "s|$WORK|WORK|g"
    echo '```'
} >"$OUT"
log "wrote $OUT"
((${#FAILED_LOGS[@]} == 0)) || log "failed rounds' logs: $LOGDIR (${FAILED_LOGS[*]})"
