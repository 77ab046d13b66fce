#!/usr/bin/env bash
#
# selftest.sh -- end-to-end check of run_regress.sh and compare_nodes.sh on a
# throw-away cluster: a primary (initdb --locale=C --encoding=UTF8) and a
# streaming physical standby (pg_basebackup -R) in a temp dir, plus an
# unrelated fresh cluster as a negative control.
#
# Usage: tests/regress/selftest.sh [--port-base N] [--allow-fail "t1 t2 ..."]
#
#   1. run_regress.sh against the primary
#   2. compare_nodes.sh primary vs standby        -> must be IDENTICAL
#   3. compare_nodes.sh primary vs fresh cluster  -> must be DIFFERENT
# All servers are stopped and the temp dir removed at exit.
# Needs root (servers run as the "postgres" OS user via runuser).
# Exit 0 if 2 and 3 behave and 1 passed (modulo --allow-fail).

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/${PG_MAJOR:-15}/bin}
BASE=55432
ALLOW_FAIL=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port-base) BASE=${2:?}; shift 2 ;;
        --allow-fail) ALLOW_FAIL=${2:?}; shift 2 ;;
        *) sed -n '2,/^$/p' "$0" >&2; exit 2 ;;
    esac
done
P=$BASE; S=$((BASE + 1)); O=$((BASE + 2))

T=$(mktemp -d /tmp/tandem-regress-selftest.XXXXXX)
chown postgres:postgres "$T"
chmod 755 "$T"
as_pg() { runuser -u postgres -- "$@"; }

cleanup() {
    for d in other standby primary; do
        [[ -f "$T/$d/postmaster.pid" ]] && as_pg "$PG_BINDIR/pg_ctl" -D "$T/$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$T"
}
trap cleanup EXIT

init_node() {  # NAME PORT
    as_pg "$PG_BINDIR/initdb" -D "$T/$1" --locale=C --encoding=UTF8 -U postgres -A trust >/dev/null
    cat >> "$T/$1/postgresql.conf" <<EOF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$T'
wal_level = replica
max_wal_senders = 5
hot_standby = on
fsync = off
EOF
    as_pg "$PG_BINDIR/pg_ctl" -D "$T/$1" -l "$T/$1.log" -w start >/dev/null
}

echo "selftest: primary :$P, standby :$S, unrelated cluster :$O in $T"
init_node primary "$P"
as_pg "$PG_BINDIR/pg_basebackup" -h 127.0.0.1 -p "$P" -U postgres -D "$T/standby" -R -X stream -c fast
sed -i "s/^port = $P\$/port = $S/" "$T/standby/postgresql.conf"
as_pg "$PG_BINDIR/pg_ctl" -D "$T/standby" -l "$T/standby.log" -w start >/dev/null
init_node other "$O"

rc=0
t0=$SECONDS
"$HERE/run_regress.sh" --host 127.0.0.1 --port "$P" --user postgres ${ALLOW_FAIL:+--allow-fail "$ALLOW_FAIL"} \
    | grep -E '^(regress|run_regress):' || rc=1
echo "selftest: run_regress.sh took $((SECONDS - t0)) s"

t0=$SECONDS
if "$HERE/compare_nodes.sh" --primary "$P" --standby "$S" --user postgres; then
    echo "selftest: OK, primary and standby compare identical ($((SECONDS - t0)) s)"
else
    echo "selftest: FAIL, primary and standby should compare identical"; rc=1
fi

if "$HERE/compare_nodes.sh" --primary "$P" --standby "$O" --user postgres > "$T/negative.txt"; then
    cat "$T/negative.txt"; echo "selftest: FAIL, an unrelated cluster compared identical"; rc=1
else
    tail -1 "$T/negative.txt"
    echo "selftest: OK, the unrelated cluster is reported different"
fi
exit $rc
