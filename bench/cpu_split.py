"""CPU split of an interval on a shared machine: ours (processes under the given roots) and
everyone else's, in % of the machine, our CPU seconds, and the steal time in %.
Shared by bench/physical.sh and bench/failover.sh.

Usage: cpu_split.py start FILE | cpu_split.py end FILE ROOT_PID...
`end` prints: OURS% OTHERS% OUR_SECONDS STEAL%"""
import json, os, sys, time


def stat():
    """Machine-wide busy and steal clock ticks so far."""
    f = open("/proc/stat").readline().split()
    return int(f[1]) + int(f[2]) + int(f[3]) + int(f[6]) + int(f[7]), int(f[8])


def snapshot():
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2:].split()
        # rest[0] = state (field 3); utime = field 14 -> rest[11]; start time -> rest[19]
        ppid, ut, st, cut, cst, start = int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14]), int(rest[19])
        procs[f"{d}:{start}"] = (int(d), ppid, ut + st + cut + cst)
    return procs


if sys.argv[1] == "start":
    busy, steal = stat()
    json.dump({"busy": busy, "steal": steal, "procs": snapshot(), "at": time.time()}, open(sys.argv[2], "w"))
    sys.exit()
saved = json.load(open(sys.argv[2]))
before = saved["procs"]
busy1, steal1 = stat()
secs = time.time() - saved["at"]
roots = {int(p) for p in sys.argv[3:] if p}
after = snapshot()
parent = {}
for snap in (before, after):
    for key, (pid, ppid, _) in snap.items():
        parent[pid] = ppid


def ours(pid):
    seen = 0
    while pid > 1 and seen < 64:
        if pid in roots:
            return True
        pid = parent.get(pid, 0)
        seen += 1
    return False


# Our processes live through the run (servers, their sessions, the relay, pgbench); what
# they reaped meanwhile (short sessions) is in their cutime. Everyone else's share is the
# machine's busy time minus ours: counting it per process would miss short-lived processes
# or, via cutime, count their whole lives.
mine = 0
for key, (pid, ppid, t) in after.items():
    if ours(pid):
        mine += t - before[key][2] if key in before else t
other = max(0, busy1 - saved["busy"] - mine)
hz, n = os.sysconf("SC_CLK_TCK"), os.cpu_count()
pc = lambda ticks: ticks / hz / secs / n * 100
print(f"{pc(mine):.0f} {pc(other):.0f} {mine / hz:.2f} {pc(steal1 - saved['steal']):.1f}")
