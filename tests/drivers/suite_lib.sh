# Shared by the run_*_suite.sh scripts: a driver's own test suite run directly against a fresh
# PostgreSQL cluster and through `tandem proxy` in session and transaction mode. Source it,
# then call `suite_init "$@"`. Environment (common to every script):
#   SUITE_CACHE   venvs, sources and logs (default /var/tmp/tandem-suites)
#   TANDEM_BIN    the tandem binary (default: $CARGO_TARGET_DIR or target/, debug build)
#   PG_BIN        PostgreSQL server programs (default: pg_config --bindir)
#   TANDEM_LOG    the proxy's --log filter (default warn)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${SUITE_CACHE:-/var/tmp/tandem-suites}"
pg_bin="${PG_BIN:-$(pg_config --bindir 2>/dev/null || true)}"
if [[ ! -x "$pg_bin/initdb" ]]; then
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
fi
tandem="${TANDEM_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tandem}"

# suite_init ARGS...: reads `[direct|session|transaction ...] [-- EXTRA...]` into `modes`
# (default: all three) and `extra_args`, creates the cache and arms the cleanup.
suite_init() {
    modes=()
    extra_args=()
    while (($#)); do
        case "$1" in
            --) shift; extra_args=("$@"); break ;;
            direct|session|transaction) modes+=("$1") ;;
            *) echo "unknown argument $1" >&2; exit 2 ;;
        esac
        shift
    done
    ((${#modes[@]})) || modes=(direct session transaction)
    mkdir -p "$cache"
    data="" proxy_pid=""
    trap cleanup EXIT
}

# Builds the proxy if a proxied run needs it and it is missing.
ensure_tandem() {
    if [[ " ${modes[*]} " != " direct " && ! -x "$tandem" ]]; then
        (cd "$repo" && cargo build -p tandem)
    fi
}

# unpack_sdist PIP PACKAGE VERSION: downloads PACKAGE's source distribution from PyPI into
# the cache and unpacks it there (the directory is named like the archive, e.g. Django-5.1.4).
unpack_sdist() {
    local pip=$1 package=$2 version=$3
    "$pip" download -q --no-binary :all: --no-deps "$package==$version" -d "$cache"
    tar -xzf "$(ls "$cache"/*.tar.gz | grep -i "/$package-$version\.tar\.gz$" | head -1)" -C "$cache"
}

# copy_sdist_tests PIP PACKAGE VERSION DIR: PACKAGE's sdist (downloaded and unpacked into the
# cache on first use) gives its test directory DIR, copied into a fresh `work` directory.
copy_sdist_tests() {
    local pip=$1 package=$2 version=$3 dir=$4
    local src="$cache/$package-$version"
    [[ -d "$src/$dir" ]] || unpack_sdist "$pip" "$package" "$version"
    work="$cache/run-$package-$version"
    rm -rf "$work" && mkdir -p "$work" && cp -r "$src/$dir" "$work/$dir"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# init_cluster [INITDB_ARGS...]: a fresh data directory in `data` (trust auth, user postgres).
# A fresh cluster per run: suites leave tables, types and prepared transactions behind when
# they fail.
init_cluster() {
    data="$(mktemp -d "$cache/pgdata.XXXXXX")"
    [[ $(id -u) == 0 ]] && chown postgres "$data"
    as_postgres "$pg_bin/initdb" -D "$data" -U postgres -A trust "$@" >/dev/null
}

# start_cluster PORT [SERVER_OPTIONS]: starts the `data` cluster on 127.0.0.1:PORT.
start_cluster() {
    pg_port=$1
    as_postgres "$pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
        -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c jit=off -c max_connections=300 ${2:-}" >/dev/null
}

# admin_sql DATABASE ARGS...: psql as postgres on the cluster (ARGS: -c ... or a here-doc).
admin_sql() {
    local db=$1
    shift
    as_postgres "$pg_bin/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" "$@" >/dev/null
}

# start_proxy PORT MODE LOG ARGS...: the proxy on 127.0.0.1:PORT in front of `pg_port`, in
# pool mode MODE, logging to LOG; ARGS add flags (--auth ...). Waits until it accepts.
start_proxy() {
    local port=$1 mode=$2 log=$3
    shift 3
    "$tandem" proxy --listen "127.0.0.1:$port" --primary "127.0.0.1:$pg_port" --pool-mode "$mode" \
        --control-user postgres --pool-size 100 --log "${TANDEM_LOG:-warn}" "$@" >>"$log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 50); do
        "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
        sleep 0.2
    done
    echo "proxy did not come up, see $log" >&2
    return 1
}

# connect_port MODE LOG: sets `port` to where a suite connects in MODE: PostgreSQL itself for
# `direct`, else a fresh proxy in that pool mode (trust auth), logging to LOG (emptied first).
connect_port() {
    local mode=$1 log=$2
    port=$pg_port
    if [[ $mode != direct ]]; then
        port=$(free_port)
        : >"$log"
        start_proxy "$port" "$mode" "$log" --auth trust
    fi
}

stop_proxy() {
    if [[ -n "$proxy_pid" ]]; then
        # SIGTERM first; a proxy still waiting for a stuck transaction to finish gets SIGKILL.
        kill "$proxy_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
    fi
    proxy_pid=""
}

# Stops the proxy and the cluster of the current run (also on exit).
cleanup() {
    stop_proxy
    if [[ -n "$data" && -d "$data" ]]; then
        as_postgres "$pg_bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$data"
    fi
    data=""
}
