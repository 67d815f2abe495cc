#!/usr/bin/env python3
"""Where the standing system's CPU goes: CPU time per event of every service and thread.

Runs `na64daq bench --json` (its arguments after `--`), samples the CPU ticks of every
thread of every process under it from /proc/PID/task/TID/stat every 0.1 s, and reports,
per readout mode, the CPU microseconds per event of each service's main thread, its ZeroMQ
I/O thread and its other threads over the bench's timed windows (first message to last spill
closed of each run). CPU time per event is what the rate of a machine whose cores are all
busy is made of, and it moves far less with the load of other jobs than a rate does, so it
is the figure to compare changes with (docs/performance.md).

    python scripts/cpu_per_event.py [--json] -- --runs 2 --feature-events 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    return out


def _descendants(root: int) -> set[int]:
    parents, found, todo = _parents(), set(), [root]
    while todo:
        p = todo.pop()
        for pid, pp in parents.items():
            if pp == p and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def _threads(pids: set[int]) -> dict[tuple[int, int], tuple[str, int]]:
    """(pid, tid) -> (thread name, CPU ticks so far)."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            name = s[s.index("(") + 1:s.rindex(")")]
            fields = s.rsplit(")", 1)[1].split()
            out[(pid, int(tid))] = (name, int(fields[11]) + int(fields[12]))
    return out


def _kind(pid: int, tid: int, name: str) -> str:
    if pid == tid:
        return "main"
    return "zmq-io" if name.startswith("ZMQbg/IO") else "other"


def per_event(samples: list[tuple[float, dict[tuple[int, int], tuple[str, int]]]],
              bench: dict[str, Any], mode: str) -> dict[str, Any]:
    """CPU us per event by (service, thread kind) over the timed windows of `mode`."""
    p = bench[f"pipeline_{mode}"]
    names = {pid: name for name, pid in p["pids"].items()}
    cpu: dict[tuple[str, str], float] = {}
    events = 0
    for r in p["runs"]:
        a = min(samples, key=lambda s: abs(s[0] - r["t0"]))[1]
        b = min(samples, key=lambda s: abs(s[0] - r["t_last_spill"]))[1]
        for (pid, tid), (name, ticks) in b.items():
            if pid in names:
                before = a.get((pid, tid), (name, 0))[1]
                key = (names[pid], _kind(pid, tid, name))
                cpu[key] = cpu.get(key, 0.0) + (ticks - before) * TICK_S
        events += r["events"]
    rows = {f"{svc}/{kind}": round(s / events * 1e6, 3) for (svc, kind), s in sorted(cpu.items())
            if s}
    return {"events": events, "ratios": [r["ratio"] for r in bench[f"runs_{mode}"]],
            "cpu_us_per_event": rows,
            "total_cpu_us_per_event": round(sum(cpu.values()) / events * 1e6, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("bench_args", nargs="*", help="arguments of na64daq bench (after --)")
    a = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "daq.cli", "bench", "--json",
                             *a.bench_args], stdout=subprocess.PIPE)
    samples = []
    while proc.poll() is None:
        samples.append((time.time(), _threads(_descendants(proc.pid))))
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else b""
    if proc.returncode != 0 or not out:
        print(f"cpu_per_event: the bench failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    bench = json.loads(out)
    res = {m: per_event(samples, bench, m) for m in ("feature", "waveform")}
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    for mode, r in res.items():
        print(f"{mode}: {r['events']} events, ratios to bare ZeroMQ "
              f"{', '.join(f'{x:.3f}' for x in r['ratios'])}; CPU us per event "
              f"{r['total_cpu_us_per_event']}")
        for k, v in r["cpu_us_per_event"].items():
            print(f"  {k:24s} {v:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
