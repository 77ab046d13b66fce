#!/usr/bin/env python3
"""Turn the raw pgbench runs of bench/proxy.sh into the markdown result tables.

Input: a TSV with a header line and the columns
  round workload path tps latency_ms failed proxy_cpu_us load1 exit steal_us busy_us
one line per pgbench run (path is direct, tandem or pgbouncer; tps is empty when
the run failed), and optionally the steal time (µs per transaction) under which a run
counts as quiet. Output (stdout): the median table with ratios, then every run.

TPS columns are medians over the rounds of one workload and path. Tandem / PgBouncer is
compared within each round (the two ran seconds apart): the table gives the median of
those per-round ratios, their range, and the median over the quiet rounds only, where
neither run lost more than the given steal time per transaction to the host's other
guests.
"""

import csv
import statistics
import sys

# Which PgBouncer instance served each workload (see bench/proxy.sh).
PGBOUNCER_MODE = {
    "select-simple": "transaction",
    "select-prepared": "session",
    "tpcb-prepared": "session",
    "select-connect": "transaction",
}
LABEL = {
    "select-simple": "`-S -M simple`",
    "select-prepared": "`-S -M prepared`",
    "tpcb-prepared": "TPC-B `-M prepared`",
    "select-connect": "`-S -C` (new connection per transaction)",
}
PATHS = ("direct", "tandem", "pgbouncer")
# Optional fourth paths (see bench/proxy.sh) and how the results describe them.
EXTRA = {
    "tandem-plain": "Tandem built without profile-guided optimization (a plain `cargo build --release`)",
    "tandem-1w": "Tandem with one worker thread (`--threads 1`)",
}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def fmt(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def main() -> int:
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    quiet_steal = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    workloads = []
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])

    def cell(workload, path, column):
        return median(num(r[column]) for r in rows if r["workload"] == workload and r["path"] == path)

    def paired(workload, a, b, quiet_only=False):
        """Per-round ratios of path a's TPS to path b's."""
        out = []
        for rnd in sorted({r["round"] for r in rows}, key=int):
            ra = [r for r in rows if r["round"] == rnd and r["workload"] == workload and r["path"] == a]
            rb = [r for r in rows if r["round"] == rnd and r["workload"] == workload and r["path"] == b]
            if not ra or not rb:
                continue
            ta, tb = num(ra[0]["tps"]), num(rb[0]["tps"])
            if ta is None or not tb:
                continue
            if quiet_only:
                sa, sb = num(ra[0].get("steal_us")), num(rb[0].get("steal_us"))
                if sa is None or sb is None or max(sa, sb) > quiet_steal:
                    continue
            out.append(ta / tb)
        return out

    def paired_cells(workload, a, b):
        every, quiet = paired(workload, a, b), paired(workload, a, b, quiet_only=True)
        if not every:
            return "—", "—"
        spread = f"**{statistics.median(every):.2f}x** [{min(every):.2f}–{max(every):.2f}]"
        calm = f"{statistics.median(quiet):.2f}x ({len(quiet)} of {len(every)})" if quiet else f"— (0 of {len(every)})"
        return spread, calm

    extras = [p for p in EXTRA if any(r["path"] == p for r in rows)]
    paths = PATHS + tuple(extras)
    print("| workload | direct TPS | Tandem TPS | PgBouncer TPS (mode) | Tandem / direct "
          "| PgBouncer / direct | **Tandem / PgBouncer**, per round: median [range] "
          f"| the same, rounds with steal ≤ {quiet_steal:g} µs/txn | proxy CPU µs per txn: Tandem / PgBouncer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        d, t, b = (cell(w, p, "tps") for p in PATHS)
        tc, bc = cell(w, "tandem", "proxy_cpu_us"), cell(w, "pgbouncer", "proxy_cpu_us")
        spread, calm = paired_cells(w, "tandem", "pgbouncer")
        print(f"| {LABEL.get(w, w)} | {fmt(d)} | {fmt(t)} | {fmt(b)} ({PGBOUNCER_MODE.get(w, '?')}) "
              f"| {ratio(t, d)} | {ratio(b, d)} | {spread} | {calm} | {fmt(tc, 1)} / {fmt(bc, 1)} |")
    for x in extras:
        print()
        print(f"{EXTRA[x]} (`{x}`, same rounds):")
        print()
        print(f"| workload | {x} TPS | {x} / direct | {x} / PgBouncer, per round "
              f"| {x} / Tandem, per round | proxy CPU µs per txn: {x} / Tandem |")
        print("|---|---:|---:|---:|---:|---:|")
        for w in workloads:
            d, t1 = cell(w, "direct", "tps"), cell(w, x, "tps")
            vs_pgb, _ = paired_cells(w, x, "pgbouncer")
            vs_tandem, _ = paired_cells(w, x, "tandem")
            print(f"| {LABEL.get(w, w)} | {fmt(t1)} | {ratio(t1, d)} | {vs_pgb} | {vs_tandem} "
                  f"| {fmt(cell(w, x, 'proxy_cpu_us'), 1)} / {fmt(cell(w, 'tandem', 'proxy_cpu_us'), 1)} |")
    print()
    print("Latency (median of the rounds' average latency, ms):")
    print()
    print("| workload | " + " | ".join(paths) + " |")
    print("|---|" + "---:|" * len(paths))
    for w in workloads:
        print(f"| {LABEL.get(w, w)} | " + " | ".join(fmt(cell(w, p, "latency_ms"), 3) for p in paths) + " |")
    print()
    print("<details><summary>Every run (in the order they ran)</summary>")
    print()
    print("| round | workload | path | TPS | avg latency ms | failed txns | proxy CPU µs/txn "
          "| machine busy µs/txn | steal µs/txn | load (1 min) before | exit |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['round']} | {r['workload']} | {r['path']} | {fmt(num(r['tps']))} | {r['latency_ms'] or '—'} "
              f"| {r['failed'] or '—'} | {r['proxy_cpu_us'] or '—'} | {r.get('busy_us') or '—'} "
              f"| {r.get('steal_us') or '—'} | {r['load1']} | {r['exit']} |")
    print()
    print("</details>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
