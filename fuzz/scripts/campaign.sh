#!/usr/bin/env bash
# Runs fuzz targets one after another (one core each, never in parallel),
# SECONDS_PER_TARGET seconds each, continuing past crashes (fork mode), and
# writes each run's log to fuzz/logs/<target>.log.
#   RUSTC_BOOTSTRAP=1 fuzz/scripts/campaign.sh [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECONDS_PER_TARGET:-600}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(session frame startup pipeline classify)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none -a
mkdir -p logs
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${SECS}s starting $(date -u +%FT%TZ)"
    # Exit status is non-zero when crashes were found; keep going.
    cargo fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "logs/$t.log" 2>&1 || true
    echo "== $t: done $(date -u +%FT%TZ); artifacts: $(ls "artifacts/$t" | wc -l)"
done
