#!/usr/bin/env python3
"""Prints the comparison table from the load tool's JSON lines (medians of
repeated runs; ratios against ejabberd over STARTTLS from the same file)."""
import collections, json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")

def key(r):
    return (r["server"], r["transport"])

def cpu_total(pairs, exclude=("load-tool",)):
    return sum(v for n, v in pairs if n not in exclude and v is not None and v == v)

print("\n## idle: KiB per idle session (median over runs on fresh processes)")
idle = collections.defaultdict(lambda: collections.defaultdict(list))
# A run on a process that already held these sessions once measures
# nothing (memory freed by the last run is reused): skip such rows.
fresh = {(r["server"], r["transport"], r["run"]) for r in rows
         if r["scenario"] == "idle" and r["kib_per_session"] > 0}
for r in rows:
    if r["scenario"] == "idle" and (r["server"], r["transport"], r["run"]) in fresh:
        idle[key(r)][r["process"]].append(r["kib_per_session"])
idle_cost = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    if r["scenario"] == "idle" and r.get("idle_cpu_percent") is not None:
        idle_cost[key(r)][r["process"]].append((r["idle_cpu_percent"], r.get("idle_wakeups_per_s")))
for k, procs in sorted(idle.items()):
    parts = {p: med(v) for p, v in procs.items()}
    print(f"{k[0]:9} {k[1]:9} total {sum(parts.values()):7.1f}   " +
          "  ".join(f"{p} {v:.1f}" for p, v in sorted(parts.items())))
if idle_cost:
    print("\n## idle: CPU % of one core and wakeups (context switches) per second, sessions held and silent")
    for k, procs in sorted(idle_cost.items()):
        print(f"{k[0]:9} {k[1]:9} " + "  ".join(
            f"{p} {med([c for c, _ in v]):.2f} % {med([w for _, w in v]):.0f}/s" for p, v in sorted(procs.items())))

print("\n## chat: per rate step (median over runs); CPU = server processes, µs per delivered message")
chat = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    if r["scenario"] == "chat":
        chat[key(r)][r["rate"]].append(r)
base = {}
for k, steps in sorted(chat.items()):
    for rate, rs in sorted(steps.items()):
        cpu = med([cpu_total(r["cpu_us_per_1000"]) / 1000 for r in rs])
        per = {n: med([(dict(r["cpu_us_per_1000"]).get(n) or float("nan")) / 1000 for r in rs])
               for n, _ in rs[0]["cpu_us_per_1000"]}
        p99 = med([r["p99_ms"] for r in rs])
        lost = med([r["lost"] for r in rs])
        if k == ("ejabberd", "starttls"):
            base[rate] = cpu
        print(f"{k[0]:9} {k[1]:9} rate {rate:6}: delivered {med([r['delivered'] for r in rs]):8.0f} lost {lost:6.0f} "
              f"p50 {med([r['p50_ms'] for r in rs]):7.2f} p99 {p99:7.2f} ms  tool lag p99 {med([r.get('lag_p99_ms') for r in rs]):6.2f}  CPU {cpu:6.1f} µs/msg  ("
              + " ".join(f"{n} {v:.1f}" for n, v in per.items()) + ")")
if base:
    print("\n## chat: server CPU per message relative to ejabberd over STARTTLS at the same rate")
    for k, steps in sorted(chat.items()):
        for rate, rs in sorted(steps.items()):
            if rate in base and base[rate] == base[rate]:
                cpu = med([cpu_total(r["cpu_us_per_1000"]) / 1000 for r in rs])
                core = med([dict(r["cpu_us_per_1000"]).get("core", float("nan")) / 1000 for r in rs])
                extra = f"  core alone {core / base[rate]:.3f}×" if core == core else ""
                print(f"{k[0]:9} {k[1]:9} rate {rate:6}: {cpu / base[rate]:.2f}×{extra}")
    print("\n## chat: highest rate with p99 <= 100 ms and nothing lost")
    for k, steps in sorted(chat.items()):
        ok = [rate for rate, rs in steps.items()
              if med([r["p99_ms"] for r in rs]) <= 100 and med([r["lost"] for r in rs]) == 0]
        print(f"{k[0]:9} {k[1]:9} {max(ok) if ok else 0}")

print("\n## login: logins per second (median over runs)")
login = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    if r["scenario"] == "login":
        login[key(r)][r["concurrency"]].append(r)
for k, steps in sorted(login.items()):
    print(f"{k[0]:9} {k[1]:9} " + "  ".join(
        f"c={c}: {med([r['per_second'] for r in rs]):6.0f}/s ({med([r['failures'] for r in rs]):.0f} failed)"
        for c, rs in sorted(steps.items())))

mig = [r for r in rows if r["scenario"] == "migrate"]
if mig:
    print("\n## migrate (QUIC through the balancer)")
    for r in mig:
        m = r.get("moves") or [0, float("nan"), float("nan")]
        print(f"run {r['run']}: {r['users']} clients, {m[0]} moves: sent {r['sent']} delivered {r['delivered']} "
              f"lost {r['lost']} dup {r['duplicated']}; p99 {r['p99_ms']:.1f} ms overall, "
              f"{m[1]:.1f} ms (max {m[2]:.1f}) within 1 s of a move")

probes = [r for r in rows if r["scenario"] == "probe"]
if probes:
    print("\n## check: the load tool beside an independent probe (bench/probe.py, 50 msg/s) in the same step")
    tool = {(r["server"], r["transport"], r["rate"], r["run"]): r for r in rows if r["scenario"] == "chat"}
    for p in probes:
        t = tool.get((p["server"], p["transport"], p["rate"], p["run"]))
        tl = f"tool p50 {t['p50_ms']:.2f} p99 {t['p99_ms']:.2f}" if t else "tool: no row"
        print(f"{p['server']:9} {p['transport']:9} rate {p['rate']:6} run {p['run']}: "
              f"probe p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} ms ({p['delivered']}/{p['sent']})  |  {tl} ms")

ramps = [r for r in rows if r["scenario"] == "scale-ramp"]
if ramps:
    print("\n## scale: login ramp (all users, 64 logins in flight)")
    for r in ramps:
        print(f"{r['server']:9} {r['transport']:9} run {r['run']}: {r['users']} users in {r['seconds']:.1f} s: {r['logins_per_second']:.0f} logins/s")
