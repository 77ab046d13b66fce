#!/usr/bin/env bash
#
# compare_nodes.sh -- check that standbys hold the same data as their primary.
#
# Usage:
#   tests/regress/compare_nodes.sh --primary PORT --standby PORT [--standby PORT ...]
#                                  [--host H] [--user U] [--wait-replay SECONDS]
#                                  [--max-table-mb MB] [--verbose]
#
# For each standby, compared with the primary:
#   * roles        (pg_dumpall --roles-only)
#   * tablespaces  (pg_dumpall --tablespaces-only)
#   * the list of non-template databases
#   * per database that accepts connections:
#       - schema: pg_dump --schema-only --create (identical text)
#       - content of every ordinary table (relkind r, ONLY that table) and
#         populated materialized view outside pg_catalog/information_schema:
#         COPY (SELECT * FROM ...) TO STDOUT | LC_ALL=C sort | md5sum.
#         COPY's text output exists for every type (no cast or sort operator
#         needed, unlike ORDER BY t or t::text tricks), and sorting the lines
#         makes the hash independent of physical row order.
#       - sequences: last_value/is_called. A standby may legitimately be ahead
#         by up to 32 increments (nextval WAL-logs values in advance), which is
#         reported as expected, not as a difference.
#       - large objects (pg_largeobject + pg_largeobject_metadata)
#   * Unlogged tables/sequences cannot be read on a standby and are not
#     replicated: they are listed as EXPECTED-DIFFERENT, not failures (when the
#     other node is not in recovery they are compared like any other table).
#   * Tables larger than --max-table-mb (default 1024) are compared by
#     row count only (reported as a warning).
#
# Before comparing, a node that is in recovery is waited for (up to
# --wait-replay seconds, default 120) until pg_last_wal_replay_lsn() reaches
# the primary's pg_current_wal_lsn(). The primary should be quiet meanwhile.
#
# Output: a report; the last line is "compare: IDENTICAL ..." or
# "compare: DIFFERENT ...". Exit 0 if identical, 1 on any difference,
# 2 on usage or connection errors.
#
# Connect as a superuser (roles incl. password hashes, all tables, RLS bypass).
# Environment: PG_BINDIR (default /usr/lib/postgresql/15/bin).

set -euo pipefail

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/${PG_MAJOR:-15}/bin}
HOST=127.0.0.1
DBUSER=""
PRIMARY=""
STANDBYS=()
WAIT_REPLAY=120
MAX_TABLE_MB=1024
VERBOSE=0

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die()   { echo "compare: ERROR: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --primary) PRIMARY=${2:?}; shift 2 ;;
        --standby) STANDBYS+=("${2:?}"); shift 2 ;;
        --host) HOST=${2:?}; shift 2 ;;
        --user) DBUSER=${2:?}; shift 2 ;;
        --wait-replay) WAIT_REPLAY=${2:?}; shift 2 ;;
        --max-table-mb) MAX_TABLE_MB=${2:?}; shift 2 ;;
        --verbose|-v) VERBOSE=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[[ -n "$PRIMARY" && ${#STANDBYS[@]} -gt 0 ]] || usage

# Same output formats on every node regardless of per-database/role settings.
export PGOPTIONS="-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=1 -c bytea_output=hex -c lc_monetary=C -c row_security=off -c statement_timeout=0"
export PGCONNECT_TIMEOUT=10
export LC_ALL=C

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

conn() { echo "-h $HOST -p $1${DBUSER:+ -U $DBUSER}"; }
# q PORT DB SQL -- single query, unaligned tuples-only output
q() {
    local port=$1 db=$2 sql=$3
    # shellcheck disable=SC2046
    "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 $(conn "$port") -d "$db" -c "$sql" </dev/null
}
# Strip lines that legitimately differ between two dumps of the same data:
# the random \restrict/\unrestrict keys (PostgreSQL >= 15.14 / 17.6).
filter_dump() { grep -vE '^\\(un)?restrict ' || true; }

NDIFF=0        # real differences
NEXPECTED=0    # expected differences (unlogged, sequence pre-logging)
NWARN=0        # only partially compared
NCHECK=0

diff_report() {  # NAME FILE_A FILE_B
    local name=$1 a=$2 b=$3
    NCHECK=$((NCHECK + 1))
    if cmp -s "$a" "$b"; then
        [[ $VERBOSE == 1 ]] && echo "  same       $name"
        return 0
    fi
    NDIFF=$((NDIFF + 1))
    echo "  DIFFERENT  $name"
    { diff -u "$a" "$b" || true; } | sed -n '3,22p' | sed 's/^/      | /'
    return 0
}

in_recovery() { q "$1" postgres "SELECT pg_is_in_recovery()"; }

wait_for_replay() {  # STANDBY_PORT
    local sb=$1 target deadline=$((SECONDS + WAIT_REPLAY)) ok
    target=$(q "$PRIMARY" postgres "SELECT pg_current_wal_lsn()")
    while :; do
        ok=$(q "$sb" postgres "SELECT coalesce(pg_last_wal_replay_lsn() >= '$target'::pg_lsn, false)")
        if [[ $ok == t ]]; then
            echo "  replay     caught up with primary LSN $target"
            return 0
        fi
        if [[ $SECONDS -ge $deadline ]]; then
            echo "  WARNING    standby replay ($(q "$sb" postgres "SELECT pg_last_wal_replay_lsn()")) did not reach $target within ${WAIT_REPLAY}s"
            NWARN=$((NWARN + 1))
            return 0
        fi
        sleep 0.5
    done
}

# Relations to compare in one database, as "relkind|persistence|size_mb|populated|qualified name".
REL_SQL="
SELECT c.relkind, c.relpersistence, pg_relation_size(c.oid) / (1024 * 1024), c.relispopulated,
       format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'S') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
ORDER BY 5"

# table_hash PORT DB SELECT-SQL -> md5 of the sorted COPY text output, or "ERROR: ..."
table_hash() {
    local port=$1 db=$2 sel=$3 err="$TMP/err"
    local h
    # shellcheck disable=SC2046
    if h=$("$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 $(conn "$port") -d "$db" \
            -c "COPY ($sel) TO STDOUT" 2>"$err" </dev/null | sort -S 256M -T "$TMP" | md5sum | cut -d' ' -f1); then
        echo "$h"
    else
        echo "ERROR: $(head -1 "$err")"
    fi
}

compare_sequences() {  # DB SB SEQNAME SB_RECOVERY
    local db=$1 sb=$2 seq=$3 rec=$4 a b inc
    a=$(q "$PRIMARY" "$db" "SELECT last_value, is_called FROM $seq" 2>&1 || true)
    b=$(q "$sb" "$db" "SELECT last_value, is_called FROM $seq" 2>&1 || true)
    NCHECK=$((NCHECK + 1))
    if [[ "$a" == "$b" ]]; then
        [[ $VERBOSE == 1 ]] && echo "  same       [$db] sequence $seq"
        return 0
    fi
    inc=$(q "$PRIMARY" "$db" "SELECT seqincrement FROM pg_sequence WHERE seqrelid = '$seq'::regclass")
    local av=${a%%|*} bv=${b%%|*}
    if [[ $rec == t && "$av" =~ ^-?[0-9]+$ && "$bv" =~ ^-?[0-9]+$ ]] \
        && (( (bv - av) / inc >= 0 && (bv - av) / inc <= 32 && (bv - av) % inc == 0 )); then
        NEXPECTED=$((NEXPECTED + 1))
        SEQ_AHEAD+=("$seq(+$(( (bv - av) / inc )))")
        [[ $VERBOSE == 1 ]] && echo "  expected   [$db] sequence $seq: standby ahead by $(( (bv - av) / inc )) (WAL pre-logging of nextval)"
        return 0
    fi
    NDIFF=$((NDIFF + 1))
    echo "  DIFFERENT  [$db] sequence $seq: primary ($a) standby ($b)"
}

compare_database() {  # DB SB SB_RECOVERY
    local db=$1 sb=$2 rec=$3
    local same=0 t0=$SECONDS

    # schema
    # shellcheck disable=SC2046
    "$PG_BINDIR/pg_dump" --schema-only --create $(conn "$PRIMARY") -d "$db" 2>"$TMP/dump.err" | filter_dump > "$TMP/schema.p" \
        || { NDIFF=$((NDIFF + 1)); echo "  DIFFERENT  [$db] pg_dump failed on primary: $(head -1 "$TMP/dump.err")"; }
    # shellcheck disable=SC2046
    "$PG_BINDIR/pg_dump" --schema-only --create $(conn "$sb") -d "$db" 2>"$TMP/dump.err" | filter_dump > "$TMP/schema.s" \
        || { NDIFF=$((NDIFF + 1)); echo "  DIFFERENT  [$db] pg_dump failed on standby: $(head -1 "$TMP/dump.err")"; }
    diff_report "[$db] schema (pg_dump --schema-only, $(wc -l < "$TMP/schema.p") lines)" "$TMP/schema.p" "$TMP/schema.s"

    # relation lists
    q "$PRIMARY" "$db" "$REL_SQL" > "$TMP/rels.p"
    q "$sb" "$db" "$REL_SQL" | cut -d'|' -f1,2,4,5 > "$TMP/rels.s"
    cut -d'|' -f1,2,4,5 "$TMP/rels.p" > "$TMP/rels.p.cmp"
    diff_report "[$db] relation list ($(wc -l < "$TMP/rels.p") tables/matviews/sequences)" "$TMP/rels.p.cmp" "$TMP/rels.s"

    # content, for relations present on both
    local kind pers mb pop name sel ha hb unlogged=() big=()
    SEQ_AHEAD=()
    while IFS='|' read -r kind pers mb pop name; do
        grep -qxF "$kind|$pers|$pop|$name" "$TMP/rels.s" || continue
        if [[ $pers == u && $rec == t ]]; then
            unlogged+=("$name"); NEXPECTED=$((NEXPECTED + 1)); continue
        fi
        if [[ $kind == S ]]; then
            compare_sequences "$db" "$sb" "$name" "$rec"; continue
        fi
        if [[ $kind == m && $pop != t ]]; then
            [[ $VERBOSE == 1 ]] && echo "  skipped    [$db] $name (materialized view not populated)"
            continue
        fi
        NCHECK=$((NCHECK + 1))
        if (( mb > MAX_TABLE_MB )); then
            ha=$(q "$PRIMARY" "$db" "SELECT count(*) FROM ONLY $name" 2>&1 || true)
            hb=$(q "$sb" "$db" "SELECT count(*) FROM ONLY $name" 2>&1 || true)
            big+=("$name"); NWARN=$((NWARN + 1))
            [[ "$ha" == "$hb" ]] && { same=$((same + 1)); continue; }
            NDIFF=$((NDIFF + 1)); echo "  DIFFERENT  [$db] $name: row count $ha vs $hb (big table: count only)"; continue
        fi
        if [[ $kind == r ]]; then sel="SELECT * FROM ONLY $name"; else sel="SELECT * FROM $name"; fi
        ha=$(table_hash "$PRIMARY" "$db" "$sel")
        hb=$(table_hash "$sb" "$db" "$sel")
        if [[ "$ha" == "$hb" && "$ha" != ERROR* ]]; then
            same=$((same + 1))
            [[ $VERBOSE == 1 ]] && echo "  same       [$db] $name $ha"
        else
            NDIFF=$((NDIFF + 1))
            local ca cb
            ca=$(q "$PRIMARY" "$db" "SELECT count(*) FROM ONLY $name" 2>/dev/null || echo '?')
            cb=$(q "$sb" "$db" "SELECT count(*) FROM ONLY $name" 2>/dev/null || echo '?')
            echo "  DIFFERENT  [$db] $name: primary $ha ($ca rows) / standby $hb ($cb rows)"
        fi
    done < "$TMP/rels.p"
    echo "  content    [$db] $same tables/matviews identical ($((SECONDS - t0)) s)"
    if [[ ${#unlogged[@]} -gt 0 ]]; then
        echo "  expected   [$db] ${#unlogged[@]} unlogged relations not compared (not replicated, unreadable in recovery): ${unlogged[*]}"
    fi
    if [[ ${#SEQ_AHEAD[@]} -gt 0 ]]; then
        echo "  expected   [$db] ${#SEQ_AHEAD[@]} sequences ahead on the standby by <= 32 increments (nextval WAL-logs ahead): ${SEQ_AHEAD[*]}"
    fi
    if [[ ${#big[@]} -gt 0 ]]; then
        echo "  WARNING    [$db] compared by row count only (> ${MAX_TABLE_MB} MB): ${big[*]}"
    fi

    # large objects
    local lo_sql="SELECT loid, pageno, data FROM pg_largeobject"
    local lom_sql="SELECT oid, lomowner::regrole, lomacl FROM pg_largeobject_metadata"
    echo "$(table_hash "$PRIMARY" "$db" "$lo_sql") $(table_hash "$PRIMARY" "$db" "$lom_sql")" > "$TMP/lo.p"
    echo "$(table_hash "$sb" "$db" "$lo_sql") $(table_hash "$sb" "$db" "$lom_sql")" > "$TMP/lo.s"
    diff_report "[$db] large objects" "$TMP/lo.p" "$TMP/lo.s"
}

q "$PRIMARY" postgres "SELECT 1" >/dev/null || die "cannot connect to primary $HOST:$PRIMARY"
[[ $(in_recovery "$PRIMARY") == f ]] || echo "compare: note: the 'primary' $HOST:$PRIMARY is itself in recovery"

DB_SQL="SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate ORDER BY 1"
START=$SECONDS
for sb in "${STANDBYS[@]}"; do
    q "$sb" postgres "SELECT 1" >/dev/null || die "cannot connect to standby $HOST:$sb"
    rec=$(in_recovery "$sb")
    echo "compare: primary $HOST:$PRIMARY vs standby $HOST:$sb (in recovery: $rec)"
    [[ $rec == t ]] && wait_for_replay "$sb"

    # shellcheck disable=SC2046
    "$PG_BINDIR/pg_dumpall" --roles-only $(conn "$PRIMARY") | filter_dump > "$TMP/roles.p"
    # shellcheck disable=SC2046
    "$PG_BINDIR/pg_dumpall" --roles-only $(conn "$sb") | filter_dump > "$TMP/roles.s"
    diff_report "roles ($(grep -c '^CREATE ROLE' "$TMP/roles.p") roles)" "$TMP/roles.p" "$TMP/roles.s"
    # shellcheck disable=SC2046
    "$PG_BINDIR/pg_dumpall" --tablespaces-only $(conn "$PRIMARY") | filter_dump > "$TMP/ts.p"
    # shellcheck disable=SC2046
    "$PG_BINDIR/pg_dumpall" --tablespaces-only $(conn "$sb") | filter_dump > "$TMP/ts.s"
    diff_report "tablespaces ($(grep -c '^CREATE TABLESPACE' "$TMP/ts.p") non-default)" "$TMP/ts.p" "$TMP/ts.s"

    q "$PRIMARY" postgres "$DB_SQL" > "$TMP/dbs.p"
    q "$sb" postgres "$DB_SQL" > "$TMP/dbs.s"
    diff_report "databases ($(cut -d'|' -f1 "$TMP/dbs.p" | tr '\n' ' ' | sed 's/ $//'))" "$TMP/dbs.p" "$TMP/dbs.s"

    while IFS='|' read -r db allowconn; do
        grep -qxF "$db|$allowconn" "$TMP/dbs.s" || continue
        if [[ $allowconn != t ]]; then
            echo "  skipped    [$db] does not allow connections"
            continue
        fi
        compare_database "$db" "$sb" "$rec"
    done < "$TMP/dbs.p"
done

summary="$NCHECK checks, $NEXPECTED expected differences, $NWARN warnings, $((SECONDS - START)) s"
if [[ $NDIFF -eq 0 ]]; then
    echo "compare: IDENTICAL ($summary)"
    exit 0
fi
echo "compare: DIFFERENT: $NDIFF differences ($summary)"
exit 1
