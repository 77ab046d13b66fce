# Shared helpers of the benchmark scripts (bench/proxy.sh, bench/replicator.sh).
# Sourced, not run. Everything started here is recorded so that `bench_cleanup`
# (installed as an EXIT/INT/TERM trap by `bench_init`) stops it again: background
# processes by PID, PostgreSQL servers with `pg_ctl stop -m immediate`.
#
# Servers run as the `postgres` OS user (PostgreSQL refuses root) on free
# loopback ports, in a temporary directory that is removed at the end
# (KEEP_WORK=1 keeps it for a post-mortem).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
PG_BIN=${PG_BIN:-}
if [[ -z "$PG_BIN" ]]; then
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        PG_BIN=$(pg_config --bindir)
    else
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    fi
fi
PG_USER=${PG_USER:-postgres}

BENCH_PIDS=()      # background processes to stop
BENCH_PGDATA=()    # data directories of servers to stop
WORK=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

bench_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        # Give each a moment, then insist.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    local d
    for d in "${BENCH_PGDATA[@]}"; do
        if [[ -f "$d/postmaster.pid" ]]; then
            runuser -u "$PG_USER" -- "$PG_BIN/pg_ctl" -D "$d" stop -m immediate >/dev/null 2>&1 || true
        fi
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${KEEP_WORK:-0}" == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

# bench_init NAME: temp work dir owned by postgres, cleanup traps.
bench_init() {
    [[ $EUID -eq 0 ]] || die "run as root (servers are started as the $PG_USER user)"
    [[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL server binaries not found (set PG_BIN)"
    id "$PG_USER" >/dev/null 2>&1 || die "no OS user $PG_USER"
    WORK=$(mktemp -d "/tmp/tandem-bench-$1.XXXXXX")
    chown "$PG_USER": "$WORK"
    chmod 755 "$WORK"
    trap bench_cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# as_pg CMD...: run a command as the postgres OS user (foreground).
as_pg() { runuser -u "$PG_USER" -- "$@"; }

# Services (proxies, the replicator) start in a session of their own, as a daemon or a
# systemd unit would run, and as pg_ctl starts PostgreSQL. With the kernel's autogroup
# scheduling (kernel.sched_autogroup_enabled=1, the default here) every session is one
# scheduling group: a proxy left in this script's session would share pgbench's group and
# be preempted by pgbench's wake-ups twice as often as a proxy in its own group (measured:
# 0.45 vs 0.23 involuntary context switches per transaction, ~10% of TPS). `setsid`
# execs in place (this script has no job control, so its children are not process group
# leaders), so $! is still the service itself.

# spawn_as_pg LOGFILE CMD...: start CMD as the postgres user in the background, in its own
# session; setsid and setpriv exec, so $! is the process itself. Sets SPAWNED_PID.
spawn_as_pg() {
    local logfile=$1; shift
    setsid setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups -- "$@" >"$logfile" 2>&1 &
    SPAWNED_PID=$!
    BENCH_PIDS+=("$SPAWNED_PID")
}

# spawn LOGFILE CMD...: start CMD (as root) in the background, in its own session (see
# above). Sets SPAWNED_PID.
spawn() {
    local logfile=$1; shift
    setsid "$@" >"$logfile" 2>&1 &
    SPAWNED_PID=$!
    BENCH_PIDS+=("$SPAWNED_PID")
}

# pg_create NAME PORT: initdb (trust auth) into $WORK/NAME and append the common
# settings; extra settings can be appended to $WORK/NAME/postgresql.conf before
# pg_start.
pg_create() {
    local name=$1 port=$2 dir="$WORK/$1"
    as_pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --no-sync >"$WORK/$name-initdb.log" 2>&1 \
        || die "initdb $name failed (see $WORK/$name-initdb.log)"
    cat >>"$dir/postgresql.conf" <<EOF

# --- tandem bench (same for every path measured) ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$WORK'
max_connections = 300
shared_buffers = 512MB
fsync = on
synchronous_commit = on
full_page_writes = on
checkpoint_timeout = 30min
max_wal_size = 4GB
log_min_messages = warning
log_checkpoints = off
EOF
    BENCH_PGDATA+=("$dir")
}

# pg_start NAME: start the server created by pg_create and wait for it.
pg_start() {
    local dir="$WORK/$1"
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$WORK/$1.log" -w -t 60 start >/dev/null \
        || die "server $1 did not start (see $WORK/$1.log)"
}

# pg_start_replicating NAME PORT WAL_LEVEL: create and start a server that can feed
# replication (WAL_LEVEL replica or logical, room for 10 senders and slots).
pg_start_replicating() {
    pg_create "$1" "$2"
    printf 'wal_level = %s\nmax_wal_senders = 10\nmax_replication_slots = 10\n' "$3" >>"$WORK/$1/postgresql.conf"
    pg_start "$1"
}

# results_path: makes $OUT's directory and, unless OUT_OVERWRITE is set, moves $OUT aside
# to a time-stamped name when a result file of that name exists (two runs in a day).
results_path() {
    mkdir -p "$(dirname "$OUT")"
    if [[ -e $OUT && -z ${OUT_OVERWRITE:-} ]]; then OUT="${OUT%.md}-$(date +%H%M).md"; fi
}

# wait_port PORT [SECONDS]: until something accepts TCP connections on 127.0.0.1:PORT.
wait_port() {
    local port=$1 limit=${2:-30} i
    for ((i = 0; i < limit * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# rss_kb PID: resident set size in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# cpu_ticks PID: user+system CPU time of a process in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu_totals: machine-wide "BUSY STEAL" CPU clock ticks so far (busy: user, nice, system,
# irq, softirq).
cpu_totals() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9; exit}' /proc/stat; }

# load1: the one-minute load average.
load1() { cut -d' ' -f1 /proc/loadavg; }

# wait_low_load MAX SECONDS: wait (up to SECONDS) until the 1-minute load is at most MAX.
wait_low_load() {
    local max=$1 limit=$2 waited=0
    while awk -v l="$(load1)" -v m="$max" 'BEGIN {exit !(l > m)}'; do
        if ((waited >= limit)); then
            log "load $(load1) still above $max after ${limit}s; measuring anyway"
            return 0
        fi
        ((waited == 0)) && log "load $(load1) > $max: waiting up to ${limit}s"
        sleep 10
        waited=$((waited + 10))
    done
}

# build_tandem: release build of the tandem binary; sets TANDEM_BIN.
build_tandem() {
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "cargo build --release -p tandem"
        (cd "$REPO_ROOT" && cargo build --release -p tandem) >&2 || die "release build failed"
    fi
    TANDEM_BIN="$target/release/tandem"
    [[ -x "$TANDEM_BIN" ]] || die "no binary at $TANDEM_BIN"
}

# machine_info: markdown bullet list describing the machine and versions.
machine_info() {
    local commit dirty=""
    commit=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] && dirty=" (with uncommitted changes)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- git commit: $commit$dirty ($(git -C "$REPO_ROOT" rev-parse --abbrev-ref HEAD 2>/dev/null))"
    echo "- CPU: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "- kernel: $(uname -sr)"
    echo "- PostgreSQL: $("$PG_BIN/postgres" --version)"
    echo "- pgbench: $(pgbench --version)"
    if command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]; then
        echo "- PgBouncer: $( (pgbouncer --version 2>/dev/null || /usr/sbin/pgbouncer --version) | head -1)"
    fi
    echo "- rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared with other builds)"
}
