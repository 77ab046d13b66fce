# One Tandem HA cluster on this machine, shared by bench/failover.sh and bench/switchover.sh.
# Sourced after lib.sh, not run. Assembled as tests/src/ha.rs does: primary pg1 (a copy of one
# initdb + `pgbench -i` template), standbys s1 and s2 made by `tandem replica add` (s1 reads
# the relay's WAL by path, s2 over HTTP), the WAL relay (`tandem replicator --replication
# physical --mode sync|async`), three witnesses and the proxy following the group; with
# HA_AGENTS=1 also a `tandem agent` beside each node, named to the witnesses (`--agent`), as a
# planned switchover needs.
#
# Uses: WORK, TANDEM_BIN, PG_BIN, and the knobs WITNESS_ARGS, PROXY_ARGS, RELAY_ARGS (extra
# flags, split on spaces) and SETUP_LIMIT (seconds for each setup step).

WITNESS_ARGS=(${WITNESS_ARGS:-})
PROXY_ARGS=(${PROXY_ARGS:-})
RELAY_ARGS=(${RELAY_ARGS:-})
SETUP_LIMIT=${SETUP_LIMIT:-60}
HA_AGENTS=${HA_AGENTS:-0}
HA_NODES=(pg1 s1 s2)

# ha_binary: TANDEM_BIN (given, or the release build) copied into $WORK, so a rebuild of the
# original cannot change the binary under the run, and the standbys' restore_command
# (`tandem wal-fetch`, run by the postgres user) finds it there. Sets BIN_DESC, BIN_VERSION.
ha_binary() {
    if [[ -n ${TANDEM_BIN:-} ]]; then
        [[ -x $TANDEM_BIN ]] || die "TANDEM_BIN=$TANDEM_BIN is not executable"
        BIN_DESC="the binary given as TANDEM_BIN=$TANDEM_BIN"
    else
        build_tandem
        BIN_DESC="release build"
    fi
    cp "$TANDEM_BIN" "$WORK/tandem"
    chmod 755 "$WORK/tandem"
    TANDEM_BIN="$WORK/tandem"
    BIN_VERSION=$("$TANDEM_BIN" --version 2>/dev/null || echo unknown)
}

# ha_template SCALE: initdb, `pgbench -i -s SCALE` and the writer's table `failover_writes`
# into $WORK/template, stopped; every cluster's pg1 is a copy. Sets TEMPLATE_SETTINGS (the
# PostgreSQL settings, for the report).
ha_template() {
    local scale=$1 port
    port=$(free_port)
    pg_create template "$port"
    cat >>"$WORK/template/postgresql.conf" <<EOF
shared_buffers = 128MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_log_hints = on
log_min_messages = warning
EOF
    pg_start template
    log "pgbench -i -s $scale into the template"
    pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 \
        || die "pgbench -i failed (see $WORK/pgbench-init.log)"
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c 'CREATE TABLE failover_writes (id bigint PRIMARY KEY)' -c 'VACUUM ANALYZE' -c 'CHECKPOINT' >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/template" -w -t 60 stop -m fast >/dev/null || die "could not stop the template"
    TEMPLATE_SETTINGS=$(grep -A40 '^# --- tandem bench' "$WORK/template/postgresql.conf" | grep -v '^#' | grep . \
        | grep -v -E '^(port|unix_socket)' | sed 's/ *= */=/' | awk -F= '{v[$1]=$0; if (!($1 in o)) {o[$1]=n++; k[n-1]=$1}} END {for (i=0;i<n;i++) printf "%s%s", (i?", ":""), v[k[i]]}')
}

# busy_steal: machine-wide "BUSY STEAL" clock ticks so far.
busy_steal() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9; exit}' /proc/stat; }

# sql PORT SQL: one statement on 127.0.0.1:PORT as postgres, unaligned, tuples only.
sql() { psql -X -qAt -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"; }

# wait_until_sql PORT SQL WANT SECONDS: until SQL on 127.0.0.1:PORT prints WANT.
wait_until_sql() {
    local port=$1 query=$2 want=$3 limit=$4 i
    for ((i = 0; i < limit * 5; i++)); do
        [[ $(sql "$port" "$query" 2>/dev/null) == "$want" ]] && return 0
        sleep 0.2
    done
    return 1
}

# descendants PID...: the PIDs and all their descendants.
descendants() {
    local p
    for p in "$@"; do
        echo "$p"
        descendants $(pgrep -P "$p" 2>/dev/null || true)
    done
}

# ha_state: the group's state (JSON) from the first witness that answers, or nothing.
ha_state() {
    local p
    for p in "${HA_W_PORTS[@]}"; do
        curl -fsS --max-time 1 "http://127.0.0.1:$p/v1/cluster" 2>/dev/null | jq -c '.state' 2>/dev/null && return 0
    done
    return 1
}

# ha_port NAME: the PostgreSQL port of node NAME.
ha_port() {
    case $1 in pg1) echo "$HA_P_PORT" ;; s1) echo "$HA_S1_PORT" ;; s2) echo "$HA_S2_PORT" ;; *) return 1 ;; esac
}

# ha_start DIR MODE: starts the cluster in DIR (owned by postgres; pg1, s1, s2, relay/, w1..w3
# below it), the relay in MODE (sync or async), and returns once it is ready as in
# tests/src/ha.rs: the relay reported its quorum to the group, s1, s2 and the relay stream,
# (sync) the relay set synchronous_standby_names, and a write passed the proxy. Everything it
# starts is in BENCH_PIDS and BENCH_PGDATA. Sets HA_P_PORT, HA_S1_PORT, HA_S2_PORT,
# HA_RELAY_PORT, HA_PROXY_PORT, HA_W_PORTS, HA_AGENT_PORTS, HA_WITNESS_IDS (the `--witness
# ID=ADDR` flags of the witnesses and the CLI), HA_RELAY_PID and HA_COMMANDS (each process's
# command line). Returns 1 with the reason in HA_REASON.
ha_start() {
    local dir=$1 mode=$2 i s port relay cmd
    HA_REASON="" HA_COMMANDS=() HA_W_PORTS=() HA_AGENT_PORTS=() HA_WITNESS_IDS=()
    HA_P_PORT=$(free_port); HA_S1_PORT=$(free_port); HA_S2_PORT=$(free_port)
    HA_RELAY_PORT=$(free_port); HA_PROXY_PORT=$(free_port)
    for i in 1 2 3; do HA_W_PORTS+=("$(free_port)"); done
    local p_url="postgres://postgres@127.0.0.1:$HA_P_PORT/postgres"
    local node_flags=(--node "pg1=127.0.0.1:$HA_P_PORT" --node "s1=127.0.0.1:$HA_S1_PORT" --node "s2=127.0.0.1:$HA_S2_PORT")
    local addr_flags=() agent_flags=()
    for i in 1 2 3; do
        HA_WITNESS_IDS+=(--witness "$i=127.0.0.1:${HA_W_PORTS[$((i - 1))]}")
        addr_flags+=(--witness "127.0.0.1:${HA_W_PORTS[$((i - 1))]}")
    done

    cp -a "$WORK/template" "$dir/pg1"
    printf "port = %s\nunix_socket_directories = '%s'\ncluster_name = 'pg1'\n" "$HA_P_PORT" "$dir" >>"$dir/pg1/postgresql.conf"
    BENCH_PGDATA+=("$dir/pg1")
    as_pg "$PG_BIN/pg_ctl" -D "$dir/pg1" -l "$dir/pg1.log" -w -t 60 start >/dev/null || { HA_REASON="pg1 did not start"; return 1; }
    for s in s1 s2; do
        if [[ $s == s1 ]]; then port=$HA_S1_PORT relay="$dir/relay/wal"; else port=$HA_S2_PORT relay="http://127.0.0.1:$HA_RELAY_PORT"; fi
        "$TANDEM_BIN" replica add "$s" --from "$p_url" --data-dir "$dir/$s" --port "$port" --relay "$relay" --no-start \
            >"$dir/replica-add-$s.log" 2>&1 || { HA_REASON="tandem replica add $s failed: $(tail -2 "$dir/replica-add-$s.log")"; return 1; }
        BENCH_PGDATA+=("$dir/$s")
        as_pg "$PG_BIN/pg_ctl" -D "$dir/$s" -l "$dir/$s.log" -w -t 60 start >/dev/null || { HA_REASON="$s did not start"; return 1; }
    done
    if [[ $HA_AGENTS == 1 ]]; then
        # The agent starts a stopped server again with `pg_ctl -l <data dir>.log`: the same log.
        for s in "${HA_NODES[@]}"; do
            port=$(free_port)
            HA_AGENT_PORTS+=("$port")
            agent_flags+=(--agent "$s=127.0.0.1:$port")
            cmd=("$TANDEM_BIN" agent --node "$s" --data-dir "$dir/$s" --listen "127.0.0.1:$port")
            HA_COMMANDS+=("agent $s: ${cmd[*]}")
            spawn "$dir/agent-$s.log" "${cmd[@]}"
        done
        for port in "${HA_AGENT_PORTS[@]}"; do wait_port "$port" 30 || { HA_REASON="an agent did not listen"; return 1; }; done
    fi
    for i in 1 2 3; do
        cmd=("$TANDEM_BIN" witness --id "$i" --data-dir "$dir/w$i" "${node_flags[@]}" --primary-node pg1 "${HA_WITNESS_IDS[@]}"
            "${agent_flags[@]}" "${WITNESS_ARGS[@]}")
        [[ $i == 1 ]] && HA_COMMANDS+=("witness: ${cmd[*]}")
        spawn "$dir/w$i.log" "${cmd[@]}"
    done
    for i in 1 2 3; do wait_port "${HA_W_PORTS[$((i - 1))]}" 30 || { HA_REASON="witness $i did not listen"; return 1; }; done
    cmd=("$TANDEM_BIN" proxy --primary "pg1=127.0.0.1:$HA_P_PORT" --replica "s1=127.0.0.1:$HA_S1_PORT" --replica "s2=127.0.0.1:$HA_S2_PORT"
        "${addr_flags[@]}" --listen "127.0.0.1:$HA_PROXY_PORT" "${PROXY_ARGS[@]}")
    HA_COMMANDS+=("proxy: ${cmd[*]}")
    spawn "$dir/proxy.log" "${cmd[@]}"
    wait_port "$HA_PROXY_PORT" 30 || { HA_REASON="the proxy did not listen"; return 1; }
    cmd=("$TANDEM_BIN" replicator --replication physical --mode "$mode" --primary "$p_url"
        --replica "s1=postgres://postgres@127.0.0.1:$HA_S1_PORT/postgres" --replica "s2=postgres://postgres@127.0.0.1:$HA_S2_PORT/postgres"
        --data-dir "$dir/relay" --status-listen "127.0.0.1:$HA_RELAY_PORT" "${addr_flags[@]}" "${RELAY_ARGS[@]}")
    HA_COMMANDS+=("relay ($mode): ${cmd[*]}")
    spawn "$dir/relay.log" "${cmd[@]}"
    HA_RELAY_PID=$SPAWNED_PID
    wait_port "$HA_RELAY_PORT" 30 || { HA_REASON="the relay did not listen"; return 1; }
    for ((i = 0; i < SETUP_LIMIT * 5; i++)); do
        curl -fsS --max-time 1 "http://127.0.0.1:${HA_W_PORTS[0]}/v1/cluster" 2>/dev/null \
            | jq -e '.state.replicator.slot != null and (.state.replicator.flushed | type == "string")' >/dev/null 2>&1 && break
        sleep 0.2
    done
    ((i < SETUP_LIMIT * 5)) || { HA_REASON="the relay did not report to the group within ${SETUP_LIMIT}s"; return 1; }
    wait_until_sql "$HA_P_PORT" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ('s1', 's2', 'tandem_relay')" 3 "$SETUP_LIMIT" \
        || { HA_REASON="s1, s2 and the relay not all streaming within ${SETUP_LIMIT}s"; return 1; }
    if [[ $mode == sync ]]; then
        wait_until_sql "$HA_P_PORT" "SELECT current_setting('synchronous_standby_names') LIKE '%tandem_relay%'" t "$SETUP_LIMIT" \
            || { HA_REASON="the relay did not set synchronous_standby_names within ${SETUP_LIMIT}s"; return 1; }
    fi
    for ((i = 0; i < SETUP_LIMIT * 5; i++)); do
        sql "$HA_PROXY_PORT" 'CREATE TABLE IF NOT EXISTS ha_ready (id int)' >/dev/null 2>&1 && break
        sleep 0.2
    done
    ((i < SETUP_LIMIT * 5)) || { HA_REASON="no write through the proxy within ${SETUP_LIMIT}s of the setup"; return 1; }
    return 0
}

# ha_stop PIDS_BASE PGDATA_BASE: stops what was started after BENCH_PIDS had PIDS_BASE
# entries and BENCH_PGDATA PGDATA_BASE (the processes and their children, then the servers
# with `pg_ctl stop -m immediate`) and forgets them.
ha_stop() {
    local pids_base=$1 pgdata_base=$2
    local pids=("${BENCH_PIDS[@]:$pids_base}") all p d
    all=$(descendants "${pids[@]}" | paste -sd' ')
    kill -TERM $all 2>/dev/null || true
    for p in $all; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "${BENCH_PGDATA[@]:$pgdata_base}"; do
        if [[ -f $d/postmaster.pid ]] && kill -0 "$(head -1 "$d/postmaster.pid")" 2>/dev/null; then
            as_pg "$PG_BIN/pg_ctl" -D "$d" stop -m immediate >/dev/null 2>&1 || true
        fi
    done
    BENCH_PIDS=("${BENCH_PIDS[@]:0:$pids_base}")
    BENCH_PGDATA=("${BENCH_PGDATA[@]:0:$pgdata_base}")
}

# ha_machine_section NOTE: the results file's "## Machine" section (machine_info, the disk,
# `uptime` before and after from UPTIME_START and UPTIME_END), NOTE (markdown) last.
ha_machine_section() {
    echo "## Machine"
    echo
    echo "$MACHINE"
    echo "- disk: $(df -hT "$WORK" | awk 'NR == 2 {print $2 " on " $1}') (every server, the relay and the witnesses on it)"
    echo "- \`uptime\` before: $UPTIME_START"
    echo "- \`uptime\` after: $UPTIME_END"
    echo "$1"
}

# ha_setup_section: the start of the results file's "## Setup and exact commands" section:
# the invocation (INVOCATION) and the PostgreSQL settings (TEMPLATE_SETTINGS).
ha_setup_section() {
    echo "## Setup and exact commands"
    echo
    echo '```'
    echo "$INVOCATION"
    echo '```'
    echo
    echo "- PostgreSQL (pg1; the standbys get the same file from pg_basebackup): $TEMPLATE_SETTINGS; everything else default."
}
