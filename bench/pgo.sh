#!/usr/bin/env bash
# Profile-guided release build of the tandem binary.
#
#   bench/pgo.sh            # prints the path of the optimized binary on stdout
#
# Three steps, as rustc's own release builds do it
# (https://doc.rust-lang.org/rustc/profile-guided-optimization.html):
#   1. build tandem with `-Cprofile-generate` (an instrumented binary);
#   2. run it as a proxy in transaction pooling between pgbench and a real PostgreSQL: the
#      workloads of bench/proxy.sh plus read routing to a replica, COPY and session pooling,
#      so the profile covers the paths a deployment runs; the proxy exits on SIGTERM, which
#      writes the profile;
#   3. merge the profile with llvm-profdata (rustup's llvm-tools component, installed here if
#      missing, matches rustc's LLVM) and build again with `-Cprofile-use`.
#
# Why: the proxy's per-transaction path is a few thousand instructions spread over tokio,
# bytes and our crates, and on a machine where PostgreSQL shares the cores its cost is mostly
# instruction-cache misses. The profile lets LLVM lay the hot path out contiguously and
# inline by real call counts. Only code layout and optimization choices change: the same
# source, the same behaviour.
#
# Builds go to $CARGO_TARGET_DIR/pgo-train (instrumented) and $CARGO_TARGET_DIR/pgo (final),
# so the ordinary target/release binary stays as it is. Knobs: TRAIN_SECONDS=8 per workload.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TRAIN_SECONDS=${TRAIN_SECONDS:-8}
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | awk '/^host:/ {print $2}')
PROFDATA="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$PROFDATA" ]]; then
    log "installing rustup's llvm-tools (llvm-profdata matching rustc's LLVM)"
    rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
fi
[[ -x "$PROFDATA" ]] || die "no llvm-profdata at $PROFDATA"

bench_init pgo
# A fixed path in the flags (a changed RUSTFLAGS rebuilds everything); the proxy writes its
# profile where LLVM_PROFILE_FILE says.
RAW="$TARGET/pgo-train/profraw"
rm -rf "$RAW"
mkdir -p "$RAW"

log "instrumented build (-Cprofile-generate)"
(cd "$REPO_ROOT" && RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release -p tandem \
    --target-dir "$TARGET/pgo-train") >&2 || die "instrumented build failed"
TRAIN_BIN="$TARGET/pgo-train/release/tandem"

# --- training cluster: a primary, a streaming replica, pgbench data --------------------------
PG_PORT=$(free_port)
pg_create primary "$PG_PORT"
echo "wal_level = replica" >>"$WORK/primary/postgresql.conf"
pg_start primary
as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
pgbench -i -q -s 2 -h 127.0.0.1 -p "$PG_PORT" -U postgres bench >"$WORK/init.log" 2>&1 || die "pgbench -i failed"
REPLICA_PORT=$(free_port)
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/replica" -R -X stream -c fast \
    >"$WORK/basebackup.log" 2>&1 || die "pg_basebackup failed"
sed -i "s/^port = .*/port = $REPLICA_PORT/" "$WORK/replica/postgresql.conf"
BENCH_PGDATA+=("$WORK/replica")
pg_start replica

# train PORT ARGS...: pgbench through the instrumented proxy.
train() {
    local port=$1; shift
    pgbench -n "$@" -c 16 -j 2 -T "$TRAIN_SECONDS" -h 127.0.0.1 -p "$port" -U postgres bench \
        >>"$WORK/train.log" 2>&1 || log "training run failed: pgbench $* (see $WORK/train.log)"
}

# start_proxy PORT MODE EXTRA...: the instrumented proxy; sets PROXY_PID.
start_proxy() {
    local port=$1 mode=$2; shift 2
    spawn "$WORK/proxy-$port.log" env LLVM_PROFILE_FILE="$RAW/tandem-%p-%m.profraw" "$TRAIN_BIN" --log info \
        proxy --listen "127.0.0.1:$port" --primary "127.0.0.1:$PG_PORT" --pool-mode "$mode" --auth trust \
        --control-user postgres --pool-size 20 "$@"
    PROXY_PID=$SPAWNED_PID
    wait_port "$port" 30 || die "instrumented proxy did not listen (see $WORK/proxy-$port.log)"
}

# stop_proxy: SIGTERM and wait, so that the profile is written.
stop_proxy() {
    kill -TERM "$PROXY_PID"
    local i
    for i in $(seq 100); do
        kill -0 "$PROXY_PID" 2>/dev/null || return 0
        sleep 0.2
    done
    die "instrumented proxy did not exit on SIGTERM"
}

log "training: transaction pooling, one primary (the bench's configuration)"
PORT=$(free_port)
start_proxy "$PORT" transaction --no-read-split
train "$PORT" -S -M simple
train "$PORT" -S -M prepared
train "$PORT" -M prepared
train "$PORT" -M extended
train "$PORT" -S -C
psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d bench \
    -c "\\copy (SELECT * FROM pgbench_accounts LIMIT 20000) TO '$WORK/accounts.copy'" \
    -c "CREATE TEMP TABLE a (LIKE pgbench_accounts)" -c "\\copy a FROM '$WORK/accounts.copy'" \
    >>"$WORK/train.log" 2>&1 || log "COPY training failed (see $WORK/train.log)"
stop_proxy

log "training: reads routed to a replica, and session pooling"
PORT=$(free_port)
start_proxy "$PORT" transaction --replica "127.0.0.1:$REPLICA_PORT"
train "$PORT" -S -M simple
train "$PORT" -M prepared
stop_proxy
PORT=$(free_port)
start_proxy "$PORT" session --no-read-split
train "$PORT" -S -M prepared
stop_proxy

PROFILE="$TARGET/pgo/tandem.profdata"
mkdir -p "$TARGET/pgo"
"$PROFDATA" merge -o "$PROFILE" "$RAW"/*.profraw || die "llvm-profdata merge failed"
log "optimized build (-Cprofile-use=$PROFILE)"
(cd "$REPO_ROOT" && RUSTFLAGS="-Cprofile-use=$PROFILE" \
    cargo build --release -p tandem --target-dir "$TARGET/pgo") >&2 || die "optimized build failed"
echo "$TARGET/pgo/release/tandem"
