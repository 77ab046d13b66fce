#!/usr/bin/env python3
"""Turn the raw pgbench runs of bench/proxy.sh into the markdown result tables.

Input: a TSV with a header line and the columns
  round workload path tps latency_ms failed proxy_cpu_us load1 exit
one line per pgbench run (path is direct, tandem or pgbouncer; tps is empty when
the run failed). Output (stdout): the median table with ratios, then every run.
The medians are over the rounds of one workload and path; ratios are of medians.
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
    workloads = []
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])

    def cell(workload, path, column):
        return median(num(r[column]) for r in rows if r["workload"] == workload and r["path"] == path)

    one_worker = any(r["path"] == "tandem-1w" for r in rows)
    paths = PATHS + (("tandem-1w",) if one_worker else ())
    print("| workload | direct TPS | Tandem TPS | PgBouncer TPS (mode) | Tandem / direct "
          "| PgBouncer / direct | **Tandem / PgBouncer** | proxy CPU µs per txn: Tandem / PgBouncer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        d, t, b = (cell(w, p, "tps") for p in PATHS)
        tc, bc = cell(w, "tandem", "proxy_cpu_us"), cell(w, "pgbouncer", "proxy_cpu_us")
        print(f"| {LABEL.get(w, w)} | {fmt(d)} | {fmt(t)} | {fmt(b)} ({PGBOUNCER_MODE.get(w, '?')}) "
              f"| {ratio(t, d)} | {ratio(b, d)} | **{ratio(t, b)}** | {fmt(tc, 1)} / {fmt(bc, 1)} |")
    if one_worker:
        print()
        print("Tandem with one runtime worker thread (`tandem-1w`, same rounds):")
        print()
        print("| workload | tandem-1w TPS | tandem-1w / direct | tandem-1w / PgBouncer | tandem-1w / Tandem "
              "| proxy CPU µs per txn: tandem-1w / Tandem |")
        print("|---|---:|---:|---:|---:|---:|")
        for w in workloads:
            d, t, b, t1 = (cell(w, p, "tps") for p in paths)
            print(f"| {LABEL.get(w, w)} | {fmt(t1)} | {ratio(t1, d)} | {ratio(t1, b)} | {ratio(t1, t)} "
                  f"| {fmt(cell(w, 'tandem-1w', 'proxy_cpu_us'), 1)} / {fmt(cell(w, 'tandem', 'proxy_cpu_us'), 1)} |")
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
    print("| round | workload | path | TPS | avg latency ms | failed txns | proxy CPU µs/txn | load (1 min) before | exit |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['round']} | {r['workload']} | {r['path']} | {fmt(num(r['tps']))} | {r['latency_ms'] or '—'} "
              f"| {r['failed'] or '—'} | {r['proxy_cpu_us'] or '—'} | {r['load1']} | {r['exit']} |")
    print()
    print("</details>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
