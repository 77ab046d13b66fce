#!/usr/bin/env bash
#
# run_regress.sh -- run PostgreSQL's own regression suite (src/test/regress,
# parallel_schedule, "installcheck" style) as a workload against a running
# server, e.g. the primary of a Tandem test cluster.
#
# Usage:
#   tests/regress/run_regress.sh --host H --port P [--user U] [--serial]
#                                [--max-connections N] [--allow-fail "t1 t2 ..."]
#
# What it does:
#   1. Makes sure the suite is in $SUITE_CACHE (default /var/tmp/tandem-suites).
#      The first run fetches the Debian source package of postgresql-<major>
#      with apt (a private apt state under $SUITE_CACHE/apt holding deb-src
#      entries derived from the system's own Debian entries, so /etc/apt is not
#      touched), unpacks only src/test/regress and contrib/spi, and builds
#      regress.so, refint.so and autoinc.so against the installed server
#      headers with PGXS (postgresql-server-dev-<major>, installed with apt if
#      missing). pg_regress itself is the installed one (Debian ships it in
#      postgresql-client-<major> under lib/pgxs/src/test/regress/), so it
#      matches the installed server.
#      The exact installed version is preferred; if the archive does not carry
#      its source any more, the newest available source of the same major
#      version is used and a warning is printed. Later runs reuse the cache
#      (a couple of seconds).
#      Escape hatch: PG_SRC_TARBALL=/path/postgresql-15.x.tar.{bz2,gz} uses a
#      tarball you provide instead of apt (e.g. the exact upstream release);
#      the installed version is then linked to that suite for later runs.
#   2. Runs pg_regress against --host/--port (like "make installcheck-parallel":
#      it drops and recreates the database "regression"; the tests create and
#      drop their own regress_* roles, failed tests may leave some behind).
#      Output (results/, regression.diffs, regression.out, pg_regress.log) goes
#      to $SUITE_CACHE/regress-out-<port> (wiped at the start of each run).
#   3. Prints "regress: N of M tests passed" and the failed tests' names.
#      Exit status: 0 if all passed, 1 if any failed, 2 on usage/setup errors.
#      --allow-fail takes a list of test names whose failure is known and
#      accepted (e.g. version skew, see README.md): if every failed test is in
#      it, the exit status is 0 (the summary line still counts them as failed).
#
# Requirements / caveats:
#   * The server must run on THIS host: the tests load regress.so from the
#     cache by absolute path and COPY server-side files from/to the cache dir
#     (the output dir is made world-writable so the server's OS user can
#     write into results/).
#   * Connect as a superuser. Expected outputs assume a C / UTF8 database
#     (initdb --locale=C --encoding=UTF8 is the safe choice).
#   * Environment: PG_BINDIR (default: /usr/lib/postgresql/<major>/bin, major
#     from PG_MAJOR, default 15), SUITE_CACHE.

set -euo pipefail

SUITE_CACHE=${SUITE_CACHE:-/var/tmp/tandem-suites}
PG_MAJOR=${PG_MAJOR:-15}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}

HOST=""
PORT=""
DBUSER=""
MAXCONN=""
SERIAL=0
ALLOW_FAIL=""

log()  { echo "run_regress: $*" >&2; }
die()  { echo "run_regress: ERROR: $*" >&2; exit 2; }

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --host) HOST=${2:?}; shift 2 ;;
        --port) PORT=${2:?}; shift 2 ;;
        --user) DBUSER=${2:?}; shift 2 ;;
        --max-connections) MAXCONN=${2:?}; shift 2 ;;
        --serial) SERIAL=1; shift ;;
        --allow-fail) ALLOW_FAIL=${2//,/ }; shift 2 ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[[ -n "$HOST" && -n "$PORT" ]] || usage

# ---------------------------------------------------------------------------
# Installed server version
# ---------------------------------------------------------------------------
[[ -x "$PG_BINDIR/postgres" ]] || die "no postgres binary in $PG_BINDIR"
PG_VERSION=$("$PG_BINDIR/postgres" --version | awk '{print $3}')       # e.g. 15.20
DEB_PKG="postgresql-$PG_MAJOR"
DEB_VERSION=$(dpkg-query -W -f='${Version}' "$DEB_PKG" 2>/dev/null || true)  # e.g. 15.20-0+deb12u1
[[ "$PG_VERSION" == "$PG_MAJOR".* ]] || die "server $PG_VERSION is not major $PG_MAJOR"

# The suite built for this installed version (a symlink to regress-src-<srcver>).
SUITE_LINK="$SUITE_CACHE/regress-suite-for-${DEB_VERSION:-$PG_VERSION}"

# ---------------------------------------------------------------------------
# Obtaining and building the suite
# ---------------------------------------------------------------------------

# apt with a private state dir and deb-src entries derived from the system's
# Debian deb entries (deb822 *.sources and one-line *.list files).
APT_DIR="$SUITE_CACHE/apt"
apt_private() {
    local tool=$1; shift    # apt-get or apt-cache
    "$tool" -q \
        -o Dir::Etc::SourceList=/dev/null \
        -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d" \
        -o Dir::State::Lists="$APT_DIR/lists" \
        -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" \
        -o APT::Sandbox::User=root \
        "$@"
}

setup_private_apt() {
    mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial"
    local f out="$APT_DIR/sources.list.d"
    rm -f "$out"/*
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        # keep enabled binary stanzas whose URIs are Debian archives; turn them into deb-src
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             /(^|\n)Types:([ \t]+[a-z-]+)*[ \t]+deb([ \t]|\n|$)/ && /(^|\n)URIs:[^\n]*debian/ && !/(^|\n)Enabled:[ \t]*no/ {
                 sub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print }' \
            "$f" > "$out/$(basename "$f")"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        grep -E '^[[:space:]]*deb[[:space:]].*debian' "$f" \
            | sed -E 's/^[[:space:]]*deb[[:space:]]/deb-src /' > "$out/$(basename "$f").list" || true
    done
    shopt -u nullglob
    find "$out" -type f -empty -delete
    [[ -n "$(ls -A "$out")" ]] || die "no Debian apt sources found to derive deb-src entries from"
    log "apt-get update (private deb-src lists in $APT_DIR)"
    apt_private apt-get update >/dev/null 2>"$APT_DIR/update.err" \
        || { cat "$APT_DIR/update.err" >&2; die "apt-get update failed"; }
}

# Download the source package into $SUITE_CACHE/pg-src; sets TARBALL.
fetch_source_tarball() {
    local dl="$SUITE_CACHE/pg-src" v candidates
    mkdir -p "$dl"
    setup_private_apt
    # Exact version first, then the other available versions of this major, newest first.
    candidates=$(apt_private apt-cache showsrc "$DEB_PKG" 2>/dev/null | awk '/^Version:/ {print $2}' | sort -rV | uniq)
    for v in $(printf '%s\n' $DEB_VERSION $candidates | awk '!seen[$0]++'); do
        [[ "$v" == "$PG_MAJOR".* ]] || continue
        local upstream=${v%%-*}
        local tb
        tb=$(ls "$dl/${DEB_PKG}_${upstream}.orig.tar."* 2>/dev/null | head -1 || true)
        if [[ -z "$tb" ]]; then
            log "trying apt-get source --download-only $DEB_PKG=$v"
            if ! (cd "$dl" && apt_private apt-get source --download-only "$DEB_PKG=$v" >/dev/null 2>"$dl/source-$v.err"); then
                log "  not available ($(grep -m1 -o '404.*\|Unable to find.*' "$dl/source-$v.err" || echo failed))"
                continue
            fi
            tb=$(ls "$dl/${DEB_PKG}_${upstream}.orig.tar."* | head -1)
        fi
        if [[ "$upstream" != "$PG_VERSION" ]]; then
            log "WARNING: source of $PG_VERSION is not available; using $upstream (expected outputs may differ slightly)"
        fi
        TARBALL=$tb
        return 0
    done
    die "could not download any $DEB_PKG source package (set PG_SRC_TARBALL=/path/to/postgresql-X.Y.tar.bz2)"
}

ensure_build_tools() {
    local pgxs
    pgxs="$("$PG_BINDIR/pg_config" --pgxs 2>/dev/null || true)"
    if [[ ! -f "$pgxs" || ! -x "$(dirname "$pgxs")/../test/regress/pg_regress" ]] \
        || ! command -v make >/dev/null || ! command -v gcc >/dev/null; then
        log "installing postgresql-server-dev-$PG_MAJOR make gcc (pg_regress, PGXS, server headers)"
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "postgresql-server-dev-$PG_MAJOR" make gcc >/dev/null; then
                return 0
            fi
            log "apt-get install failed (lock held by another apt?), retrying in 15 s"
            sleep 15
        done
        die "could not install postgresql-server-dev-$PG_MAJOR"
    fi
}

build_suite() {
    local tarball top srcver dest tmp
    ensure_build_tools
    if [[ -n "${PG_SRC_TARBALL:-}" ]]; then
        tarball=$PG_SRC_TARBALL
    else
        fetch_source_tarball
        tarball=$TARBALL
    fi
    [[ -f "$tarball" ]] || die "no such tarball: $tarball"
    top=$(tar tf "$tarball" | awk -F/ 'NR == 1 { print $1 }')   # postgresql-15.18
    srcver=${top#postgresql-}
    dest="$SUITE_CACHE/regress-src-$srcver"
    if [[ ! -f "$dest/.complete" ]]; then
        log "unpacking src/test/regress and contrib/spi of $top"
        tmp=$(mktemp -d "$SUITE_CACHE/build.XXXXXX")
        tar xf "$tarball" -C "$tmp" "$top/src/test/regress" "$top/contrib/spi"
        local rsrc="$tmp/$top/src/test/regress" b="$tmp/build"
        mkdir -p "$b"
        cp "$rsrc/regress.c" "$tmp/$top/contrib/spi/refint.c" "$tmp/$top/contrib/spi/autoinc.c" "$b/"
        cat > "$b/Makefile" <<EOF
MODULES = regress refint autoinc
PG_CPPFLAGS = -DREFINT_VERBOSE
PG_CONFIG = $PG_BINDIR/pg_config
PGXS := \$(shell \$(PG_CONFIG) --pgxs)
include \$(PGXS)
EOF
        log "building regress.so refint.so autoinc.so with PGXS against $("$PG_BINDIR/pg_config" --version)"
        make -s -C "$b" with_llvm=no >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; die "build failed"; }
        rm -rf "$dest"
        mkdir -p "$dest/lib"
        cp -r "$rsrc/sql" "$rsrc/expected" "$rsrc/data" "$rsrc/parallel_schedule" "$rsrc/resultmap" "$dest/"
        cp "$b"/*.so "$dest/lib/"
        chmod -R a+rX "$dest"
        echo "source=$top tarball=$(basename "$tarball") built_against=$PG_VERSION" > "$dest/.complete"
        rm -rf "$tmp"
    fi
    ln -sfn "$(basename "$dest")" "$SUITE_LINK"
}

mkdir -p "$SUITE_CACHE"
chmod a+rx "$SUITE_CACHE"
if [[ ! -f "$SUITE_LINK/.complete" || -n "${PG_SRC_TARBALL:-}" ]]; then
    t0=$SECONDS
    build_suite
    log "suite ready in $((SECONDS - t0)) s"
fi
ensure_build_tools
SUITE=$(readlink -f "$SUITE_LINK")
PG_REGRESS="$(dirname "$("$PG_BINDIR/pg_config" --pgxs)")/../test/regress/pg_regress"
log "suite: $SUITE ($(cat "$SUITE/.complete")); pg_regress $("$PG_REGRESS" --version | awk '{print $NF}')"

# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------
OUT="$SUITE_CACHE/regress-out-$PORT"
rm -rf "$OUT"
mkdir -p "$OUT/results"
# The server (its own OS user) writes COPY ... TO files into results/.
chmod 1777 "$OUT/results"
chmod a+rx "$OUT"

args=(--inputdir="$SUITE" --outputdir="$OUT" --dlpath="$SUITE/lib"
      --bindir="$PG_BINDIR" --schedule="$SUITE/parallel_schedule"
      --max-concurrent-tests=20 --host="$HOST" --port="$PORT")
[[ -n "$DBUSER" ]] && args+=(--user="$DBUSER")
if [[ $SERIAL == 1 ]]; then
    args+=(--max-connections=1)
elif [[ -n "$MAXCONN" ]]; then
    args+=(--max-connections="$MAXCONN")
fi

log "running pg_regress against $HOST:$PORT (output in $OUT)"
t0=$SECONDS
set +e
(cd "$OUT" && "$PG_REGRESS" "${args[@]}") 2>&1 | tee "$OUT/pg_regress.log"
rc=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - t0))

# Per-test lines look like "test name ... ok 12 ms" or "     name ... FAILED 34 ms"
# (parallel group members), with "failed (ignored)" for ignored tests.
total=$(grep -cE '^(test | +)[^ ].* \.\.\. ' "$OUT/pg_regress.log" || true)
failed=$(grep -E '^(test | +)[^ ].* \.\.\. +(FAILED|failed)' "$OUT/pg_regress.log" \
         | sed -E 's/^(test)? +//; s/ +\.\.\..*//' || true)
nfailed=$(grep -c . <<<"$failed" || true)
passed=$((total - nfailed))

echo
echo "regress: $passed of $total tests passed (pg_regress exit $rc, ${elapsed} s, output in $OUT)"
if [[ $nfailed -gt 0 ]]; then
    echo "regress: failed tests: $(echo $failed)"
    echo "regress: diffs: $OUT/regression.diffs"
fi
if [[ $rc -ne 0 && $nfailed -eq 0 ]]; then
    echo "regress: pg_regress failed before/while running tests; see $OUT/pg_regress.log"
    exit 1
fi
[[ $total -gt 0 ]] || exit 1
[[ $nfailed -eq 0 ]] && exit 0
unexpected=()
for t in $failed; do
    [[ " $ALLOW_FAIL " == *" $t "* ]] || unexpected+=("$t")
done
if [[ -n "$ALLOW_FAIL" && ${#unexpected[@]} -eq 0 ]]; then
    echo "regress: all failures are in the --allow-fail list; treating the run as passed"
    exit 0
fi
[[ -n "$ALLOW_FAIL" ]] && echo "regress: failures not in the --allow-fail list: ${unexpected[*]}"
exit 1
