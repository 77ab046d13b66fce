#!/usr/bin/env python3
"""The switchover benchmark's report (bench/switchover.sh): reads one run's directory and
prints the markdown sections of the results file; writes DIR/summary.json.

Usage: switchover_report.py DIR

DIR holds: meta.json; switchovers.tsv (k, from, to, CLI start and end on the wall clock, exit
status, load, seconds waited for the target to stream); switch-K.out (the CLI's output) and
state-K.json (the group's state right after it); pgbench.out, pgbench.rc and pgbench's
per-transaction logs pgbench_log.* (`client_id transaction_no time script_no time_epoch
time_us`: time = latency in µs, or `failed`; time_epoch.time_us = when it ended); writer.tsv
(bench/failover_writer.py) and ids.txt (the ids on the final primary); checksums.tsv (node,
in recovery, the tables' counts and sums); proxy.log.

Every time is the same machine's wall clock: pgbench's, the witnesses' history (`at_ms`), the
script's."""

import datetime
import glob
import json
import math
import os
import re
import statistics
import sys

d = sys.argv[1]
meta = json.load(open(os.path.join(d, "meta.json")))


def pct(v, q):
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    v = sorted(v)
    return v[max(0, math.ceil(q * len(v)) - 1)] if v else None


def med(v):
    return statistics.median(v) if v else None


def ms(x, d=0):
    return "—" if x is None else f"{x:,.{d}f} ms"


# --- pgbench's transactions: (end, latency ms), failed ones apart ----------------------------
ends, lats, failed_log = [], [], 0
for path in glob.glob(os.path.join(d, "pgbench_log.*")):
    for line in open(path):
        f = line.split()
        if len(f) < 6:
            continue
        end = int(f[4]) + int(f[5]) / 1e6
        if f[2].isdigit():
            ends.append(end)
            lats.append(int(f[2]) / 1000)
        else:
            failed_log += 1
order = sorted(range(len(ends)), key=ends.__getitem__)
ends = [ends[i] for i in order]
lats = [lats[i] for i in order]

import bisect


def window(a, b):
    """Indexes of the transactions that ended in [a, b]."""
    return range(bisect.bisect_left(ends, a), bisect.bisect_right(ends, b))


def longest_gap(a, b):
    """The longest time in [a, b] in which no transaction ended (ms)."""
    idx = window(a, b)
    pts = [a] + [ends[i] for i in idx] + [b]
    return max(y - x for x, y in zip(pts, pts[1:])) * 1000


# --- pgbench's own summary ------------------------------------------------------------------
out = open(os.path.join(d, "pgbench.out"), errors="replace").read() if os.path.exists(os.path.join(d, "pgbench.out")) else ""
rc = open(os.path.join(d, "pgbench.rc")).read().strip() if os.path.exists(os.path.join(d, "pgbench.rc")) else "?"


def field(label):
    m = re.search(re.escape(label) + r":\s*([\d.]+)", out)
    return float(m.group(1)) if m else None


processed = field("number of transactions actually processed")
failed = field("number of failed transactions")
tps_pgbench = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
tps_pgbench = float(tps_pgbench.group(1)) if tps_pgbench else None
aborted = [l for l in out.splitlines() if "aborted" in l]
errors = [l for l in out.splitlines() if re.search(r"\b(ERROR|FATAL|error)\b", l)]

# --- the switchovers ------------------------------------------------------------------------
rows = []
for line in open(os.path.join(d, "switchovers.tsv")):
    f = line.rstrip("\n").split("\t")
    if f[0] == "k":
        continue
    k, frm, to, start, end, xrc, load, ready = f[:8]
    r = dict(k=int(k), frm=frm, to=to, start=float(start), end=float(end), rc=int(xrc), load=load, ready=float(ready),
             quorum=f[8] if len(f) > 8 else "?", others=f[9] + "%" if len(f) > 9 and f[9] else "—",
             busy=f[10] + "%" if len(f) > 10 and f[10] else "—")
    cli = open(os.path.join(d, f"switch-{k}.out"), errors="replace").read()
    r["cli"] = cli
    m = re.search(r"Write pause: (\d+) ms", cli)
    r["cli_pause"] = int(m.group(1)) if m else None
    r["cli_phases"] = {p: int(t) for t, p in re.findall(r"^\s+(\d+) ms\s+(\w+)$", cli, re.M)}
    r["rejoined_cli"] = "restarted as a standby" in cli
    try:
        state = json.load(open(os.path.join(d, f"state-{k}.json")))
    except (OSError, ValueError):
        state = {}
    hist = state.get("history") or []
    prefix = f"switchover: {frm} → {to}"
    entry = next((h for h in hist if h.get("event", "").startswith(prefix) and h["at_ms"] >= r["start"] * 1000 - 1000), None)
    r["epoch"] = state.get("epoch")
    if entry:
        ev = entry["event"]
        r["event"] = ev
        r["phases"] = {p: int(t) for p, t in re.findall(r"(\w+) (\d+) ms", ev.split(";")[0]) if p != "total"}
        r["total"] = int(re.search(r"total (\d+) ms", ev).group(1))
        r["published"] = entry["at_ms"] / 1000
        r["pause_start"] = r["published"] - r["total"] / 1000
        m = re.search(r"(\d+) proxies paused \((\d+) clients\)", ev)
        r["proxies_clients"] = f"{m.group(1)} / {m.group(2)}" if m else "—"
        rej = next((h for h in hist if h.get("event") == f"{frm} rejoined as a standby" and h["at_ms"] >= entry["at_ms"]), None)
        r["rejoin_ms"] = rej["at_ms"] - entry["at_ms"] if rej else None
        req = next((h for h in hist if h.get("event", "").startswith(f"switchover to {to} requested")
                    and r["start"] * 1000 - 1000 <= h["at_ms"] <= entry["at_ms"]), None)
        r["checking_ms"] = r["pause_start"] * 1000 - req["at_ms"] if req else None
        # The clients' view, from pgbench's log.
        a, b = r["pause_start"], r["published"]
        idx = window(a, b + 2)
        r["client_max"] = max((lats[i] for i in idx), default=None)
        near = [lats[i] for i in window(a - 1, b + 1)]
        r["p99_switch"] = pct(near, 0.99)
        r["n_switch"] = len(near)
        r["gap"] = longest_gap(a - 1, b + 2)
        # From the publication to the first transaction that ended after it: the proxy resumed,
        # took a lease for the new epoch, and a commit on the new primary was acknowledged by
        # its quorum.
        i = bisect.bisect_right(ends, b)
        r["first_commit"] = (ends[i] - b) * 1000 if i < len(ends) else None
    else:
        # No new primary: what the clients saw from the request until 2 s after the CLI gave up.
        idx = window(r["start"], r["end"] + 2)
        r["client_max"] = max((lats[i] for i in idx), default=None)
        r["gap"] = longest_gap(r["start"], r["end"] + 2)
        r["reason"] = next((l for l in cli.splitlines() if "aborted" in l or "refused" in l or "error" in l.lower()), cli.strip()[-200:])
    rows.append(r)

# The proxy's own account: "switchover over: resumed paused_ms=N" at the commit.
proxy_resumes = []
if os.path.exists(os.path.join(d, "proxy.log")):
    for line in open(os.path.join(d, "proxy.log"), errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "switchover over: resumed" in line:
            t = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
            p = re.search(r"paused_ms=(\d+)", line)
            if t and p:
                at = datetime.datetime.fromisoformat(t.group(1)[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
                proxy_resumes.append((at, int(p.group(1))))
for r in rows:
    if "published" in r:
        m = [p for at, p in proxy_resumes if r["published"] - 0.5 <= at <= r["published"] + 5]
        r["proxy_paused"] = m[0] if m else None

# --- steady state: away from every switchover -----------------------------------------------
t0 = meta["pgbench_start"]
t_end = t0 + meta["duration"]
excl = [(r["start"] - 1, r["end"] + 2) for r in rows]
steady = [i for i in range(len(ends)) if t0 + 2 <= ends[i] <= t_end - 1 and not any(a <= ends[i] <= b for a, b in excl)]
steady_time = (t_end - 1) - (t0 + 2)
for a, b in excl:
    steady_time -= max(0.0, min(b, t_end - 1) - max(a, t0 + 2))
steady_lats = [lats[i] for i in steady]
steady_tps = len(steady) / steady_time if steady_time > 0 else None
overall_tps = len(ends) / meta["duration"] if ends else None

# --- the writer and the lost-write check ----------------------------------------------------
acks, wfail, wunknown, wconn = {}, [], [], 0
werr = {}
if os.path.exists(os.path.join(d, "writer.tsv")):
    for line in open(os.path.join(d, "writer.tsv")):
        f = line.rstrip("\n").split("\t")
        if len(f) < 5:
            continue
        kind = f[3]
        if kind == "connfail":
            wconn += 1
            werr["connfail " + f[4][:60]] = werr.get("connfail " + f[4][:60], 0) + 1
            continue
        if kind == "ack":
            acks[int(f[2])] = (float(f[0]), float(f[1]), f[4])
        else:
            (wfail if kind == "fail" else wunknown).append(int(f[2]))
            key = f"{kind} {f[4][:60]}"
            werr[key] = werr.get(key, 0) + 1
have = set()
ids_ok = os.path.exists(os.path.join(d, "ids.txt")) and os.path.getsize(os.path.join(d, "ids.txt")) > 0
if ids_ok:
    have = {int(x) for x in open(os.path.join(d, "ids.txt")) if x.strip()}
missing = sorted(i for i in acks if i not in have) if ids_ok else None
fail_present = sum(1 for i in wfail if i in have)
writer_max = None
for r in rows:
    if "published" in r:
        w = [(t1 - t0_) * 1000 for (t0_, t1, _) in acks.values() if t1 >= r["pause_start"] and t0_ <= r["published"] + 2]
        r["writer_max"] = max(w, default=None)
        writer_max = max(filter(None, [writer_max, r["writer_max"]]), default=None)
by_node = {}
for (_, _, node) in acks.values():
    by_node[node] = by_node.get(node, 0) + 1

checks = []
if os.path.exists(os.path.join(d, "checksums.tsv")):
    for line in open(os.path.join(d, "checksums.tsv")):
        f = line.rstrip("\n").split("\t")
        if len(f) == 3:
            checks.append(f)
sums_equal = len({c[2] for c in checks}) == 1 and checks and checks[0][2] != "unreachable"
tpcb_ok = history_rows = None
if checks and checks[0][2] != "unreachable":
    v = checks[0][2].split()
    # accounts count, sum(abalance), sum(bbalance), sum(tbalance), history count, sum(delta), writes count, sum(id)
    tpcb_ok = v[1] == v[2] == v[3] == v[5]
    history_rows = int(v[4])

# --- the report -----------------------------------------------------------------------------
ok = [r for r in rows if "published" in r and r["rc"] == 0]


def col(key):
    """The values of `key` over the successful switchovers that have it."""
    return [r[key] for r in ok if r.get(key) is not None]


client, group, gaps, p99s = col("client_max"), col("total"), col("gap"), col("p99_switch")
goal_met = bool(client) and max(client) <= 1000 and len(ok) == len(rows) and len(rows) >= 1
zero_failed = (failed or 0) == 0 and failed_log == 0 and rc == "0" and not aborted
lost = len(missing) if missing is not None else None

print("## Summary")
print()
print(f"{len(ok)} of {meta['switchovers_asked']} switchovers done" + (f" (stopped: {meta['stopped_early']})" if meta.get("stopped_early") else "") +
      f"; the final primary is {meta['final_primary']}.")
print()
print("| | median | max | goal |")
print("|---|---:|---:|---|")
print(f"| **write pause as clients see it** (longest pgbench transaction ending between the pause and 2 s after the publication) | **{ms(med(client))}** | **{ms(max(client) if client else None)}** | "
      + ("met" if goal_met else "**not met**") + " (≤ 1 s in every switchover"
      + (f"; {len(rows) - len(ok)} did not finish" if len(ok) < len(rows) else "") + ") |")
print(f"| write pause as the group sees it (history: pausing → published) | {ms(med(group))} | {ms(max(group) if group else None)} | |")
pp = col("proxy_paused")
print(f"| the proxy's PAUSE gate closed (its log: `paused_ms`) | {ms(med(pp))} | {ms(max(pp) if pp else None)} | |")
print(f"| longest time without any transaction completing (±1 s / +2 s around the pause) | {ms(med(gaps))} | {ms(max(gaps) if gaps else None)} | |")
print(f"| p99 latency within ±1 s of the pause | {ms(med(p99s), 1)} | {ms(max(p99s) if p99s else None, 1)} | |")
wm = col("writer_max")
print(f"| the writer's longest insert across the pause | {ms(med(wm))} | {ms(max(wm) if wm else None)} | |")
print()
print(f"Steady state (transactions ending away from the switchovers: from 1 s before each CLI call to 2 s after it returned, "
      f"and not in pgbench's first 2 s or last 1 s; {steady_time:.0f} s of {meta['duration']} s): "
      f"**p99 {ms(pct(steady_lats, 0.99), 1)}**, p50 {ms(pct(steady_lats, 0.5), 1)}, max {ms(max(steady_lats) if steady_lats else None, 1)}, "
      f"**{steady_tps:,.0f} TPS**; overall (the whole run, switchovers included) {overall_tps:,.0f} TPS from the log, "
      f"pgbench says {tps_pgbench if tps_pgbench is not None else '?'} TPS." if steady_tps and overall_tps else "Steady state: no data.")
print()
print("Failed transactions and lost writes:")
print()
print(f"- pgbench: **{int(failed) if failed is not None else '?'} failed transactions** (\"number of failed transactions\"), "
      f"{failed_log} failed in its per-transaction log, exit status {rc}, {len(aborted)} lines about aborted clients"
      f"{': ' + '; '.join(aborted[:3]) if aborted else ''}; {int(processed) if processed is not None else '?':,} transactions processed"
      f" ({len(ends):,} in the log). " + ("**Must be 0: met.**" if zero_failed else "**Must be 0: NOT met.**"))
if errors:
    print(f"  pgbench's error lines (first 5): " + " / ".join(f"`{e.strip()[:160]}`" for e in errors[:5]))
print(f"- the writer: {len(acks):,} inserts acknowledged ({', '.join(f'{n} {c:,}' for n, c in sorted(by_node.items()))}), "
      f"{len(wfail)} failed with an ERROR, {len(wunknown)} of unknown outcome, {wconn} connection failures"
      + (f" ({'; '.join(f'{k} ×{v}' for k, v in werr.items())})" if werr else "") + ".")
print(f"- **lost writes: {lost if lost is not None else '? (the ids could not be read)'}** acknowledged ids missing on the final primary "
      f"{meta['final_primary']} ({len(have):,} rows there){', ids ' + str(missing[:20]) if missing else ''}; "
      f"{fail_present} inserts that failed with an ERROR are there (must be 0).")
print(f"- every node's tables after the run (`pgbench_accounts` count and sum(abalance), sum(bbalance), sum(tbalance), "
      f"`pgbench_history` count and sum(delta), the writer's count and sum(id)): "
      + ("**the same on all three**" if sums_equal else "**DIFFERENT**")
      + ("; TPC-B's four balance sums are equal (no partial transaction)" if tpcb_ok else "; **TPC-B's balance sums differ**" if tpcb_ok is False else "")
      + ("" if history_rows is None else
         f"; `pgbench_history` has {history_rows:,} rows, one per transaction pgbench counted as processed"
         if processed is not None and history_rows == int(processed) else
         f"; **`pgbench_history` has {history_rows:,} rows, pgbench counted {processed} transactions as processed**") + ".")
print()
print("| node | in recovery | accounts sum(abalance) bbalance tbalance history sum(delta) writes sum(id) |")
print("|---|---|---|")
for c in checks:
    print(f"| {c[0]} | {c[1]} | `{c[2]}` |")
print()

print("## Compared with the anchors")
print()
print(f"Tandem: median {ms(med(client))}, at most {ms(max(client) if client else None)} without a write as clients saw it, "
      f"{int(failed) if failed is not None else '?'} failed transactions, the old primary back as a standby through its agent "
      f"after {sum(1 for r in ok if r['rejoined_cli'])} of {len(ok)} switchovers. "
      "The anchors are the issue's; none is measured here:")
print()
print("- Patroni: a plain `patronictl switchover` (no pooler paused) stops the old primary under its clients, who get")
print("  errors and reconnect.")
print("- CloudNativePG: its switchover does not pause the pooler; its documentation (cloudnative-pg/cloudnative-pg,")
print("  docs/src/connection_pooling.md, \"Pausing connections\") asks the user to set the Pooler's `paused: true`, switch")
print("  over with the `cnpg` plugin, then set it back, and calls integrating the two future work.")
print("- stolon-pgbouncer: pauses every PgBouncer, then has stolon fail the primary's keeper; the run shown in its README")
print("  (gocardless/stolon-pgbouncer) pauses at ts=31 and resumes at ts=41, about 10 s.")
print("- pgcat: `PAUSE` returns without waiting for the queries in flight (postgresml/pgcat issue #917), so it")
print("  cannot make a switchover safe by itself.")
print()

# Where the time goes.
names = []
for r in ok:
    for p in r["phases"]:
        if p not in names:
            names.append(p)
print("## Where the time goes")
print()
print("Medians over the switchovers, from the group's history (each phase from its commit in Raft to the next's).")
print("`checking` (the old primary's agent asked, the target's lag checked, a `CHECKPOINT` on the old primary) comes")
print("before the pause and is not part of it; `rejoined` is from the publication to the old primary marked a")
print("standby again (restarted by its agent, streaming from the new primary).")
print()
print("| checking (before the pause) | " + " | ".join(names) + " | total (write pause) | published → first commit | published → rejoined | CLI call (request → rejoined) |")
print("|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|")
print(f"| {ms(med(col('checking_ms')))} | "
      + " | ".join(ms(med([r['phases'][p] for r in ok if p in r['phases']])) for p in names)
      + f" | {ms(med(group))} | {ms(med(col('first_commit')))} | {ms(med(col('rejoin_ms')))} | "
      f"{ms(med([(r['end'] - r['start']) * 1000 for r in ok]))} |")
print()
if ok:
    share = {p: med([r["phases"].get(p, 0) / r["total"] for r in ok if r["total"]]) for p in names}
    top = max(share, key=share.get)
    fc = med(col("first_commit"))
    print(f"The largest part of the group's pause is `{top}` (median {share[top] * 100:.0f}% of it). The clients wait longer"
          f" than the group's pause: after the publication the first pgbench transaction ended {ms(fc)} later (median). In"
          " that time the proxy sees the new epoch, opens its gate, takes a write lease for the epoch and reaches the new"
          " primary, whose commits wait for a member of its new quorum (the relay retargeted, a standby re-pointed) to"
          " stream from it; this benchmark does not time those steps apart. A transaction that had just begun when the"
          " gate closed waited through the pause and this.")
    print()

print("## Every switchover")
print()
print("Times in ms. Phases from the group's history; \"clients: max\" is the longest pgbench transaction that ended between")
print("the pause and 2 s after the publication; \"p99 ±1 s\" over the transactions that ended within 1 s of the pause")
print("(n of them); \"no commit\" the longest time without any transaction ending; \"writer\" its longest insert across the pause.")
print("\"others' CPU before\": the share of the machine (100% = both cores) that processes not of this benchmark used in")
print("the steady load before the switchover; \"busy during\": how busy the machine was from the CLI call to its return.")
print()
print("| # | from → to | load | others' CPU before | busy during | checking | " + " | ".join(names) + " | **group total** | CLI \"Write pause\" | proxy paused | published → first commit | **clients: max** | p99 ±1 s (n) | no commit | writer | proxies / clients paused | rejoined after | status |")
print("|---:|---|---:|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
for r in rows:
    if "published" not in r:
        status = f"**failed** (exit {r['rc']})"
        print(f"| {r['k']} | {r['frm']} → {r['to']} | {r['load']} | {r['others']} | {r['busy']} | — | " + " | ".join("—" for _ in names)
              + f" | — | — | — | — | **{ms(r['client_max']).replace(' ms', '')}** | — | {r['gap']:.0f} | — | — | — | {status} |")
        continue
    status = "ok" if r["rc"] == 0 and r["rejoined_cli"] else f"exit {r['rc']}" + ("" if r["rejoined_cli"] else ", old primary not a standby when the CLI returned")
    print(f"| {r['k']} | {r['frm']} → {r['to']} | {r['load']} | {r['others']} | {r['busy']} | "
          + (f"{r['checking_ms']:.0f} | " if r.get("checking_ms") is not None else "— | "), end="")
    print(" | ".join(str(r["phases"].get(p, "—")) for p in names)
          + f" | **{r['total']}** | {r.get('cli_pause') or '—'} | {r.get('proxy_paused') or '—'} | {ms(r.get('first_commit')).replace(' ms', '')} | **{r['client_max']:.0f}** | {r['p99_switch']:.1f} ({r['n_switch']}) | "
          f"{r['gap']:.0f} | {r['writer_max']:.0f} | {r['proxies_clients']} | {r['rejoin_ms'] if r.get('rejoin_ms') is not None else '—'} | {status} |")
print()
failed_rows = [r for r in rows if "published" not in r]
if failed_rows:
    print("Switchovers that did not finish (the series stops at the first; \"clients: max\" and \"no commit\" above are then")
    print("from the request to 2 s after the CLI returned):")
    print()
    for r in failed_rows:
        print(f"- {r['k']}: {r['frm']} → {r['to']}: `{r['reason'].strip()}`; the longest pgbench transaction then "
              f"{ms(r['client_max'])}, {ms(r['gap'])} without any transaction ending.")
    print()
print("The primary's `synchronous_standby_names` after each switchover (the quorum its commits wait for until the next):")
print()
print("```")
for r in rows:
    print(f"{r['k']}: {r['frm']} → {r['to']}: primary {r['to'] if 'published' in r else r['frm']}: {r['quorum']}")
print("```")
print()
print("The group's history entry of each:")
print()
print("```")
for r in rows:
    print(f"{r['k']}: {r.get('event', '(none)')}")
print("```")
print()
if rows:
    print("The CLI's output of the first switchover:")
    print()
    print("```")
    print(rows[0]["cli"].rstrip())
    print("```")
    print()

summary = {
    "switchovers": len(ok), "asked": meta["switchovers_asked"],
    "client_median_ms": med(client), "client_max_ms": max(client) if client else None,
    "group_median_ms": med(group), "group_max_ms": max(group) if group else None,
    "p99_switch_median_ms": med(p99s), "steady_p99_ms": pct(steady_lats, 0.99), "steady_max_ms": max(steady_lats) if steady_lats else None,
    "steady_tps": steady_tps, "overall_tps": overall_tps, "failed": failed, "failed_log": failed_log, "pgbench_rc": rc,
    "aborted": len(aborted), "lost": lost, "acked": len(acks), "writer_errors": len(wfail) + len(wunknown),
    "nodes_equal": sums_equal, "goal_met": goal_met,
}
summary["headline"] = (f"{len(ok)}/{meta['switchovers_asked']} switchovers; write pause clients median {ms(summary['client_median_ms'])} max {ms(summary['client_max_ms'])}, "
                       f"group median {ms(summary['group_median_ms'])} max {ms(summary['group_max_ms'])}; p99 switch {ms(summary['p99_switch_median_ms'], 1)} vs steady {ms(summary['steady_p99_ms'], 1)}; "
                       f"failed {failed} (+{failed_log} in log), rc {rc}, lost {lost} of {len(acks)}, writer errors {summary['writer_errors']}, nodes equal {sums_equal}")
json.dump(summary, open(os.path.join(d, "summary.json"), "w"), indent=1)
