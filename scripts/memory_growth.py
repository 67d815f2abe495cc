"""Memory over a long multi-process run: does any service grow?

    python scripts/memory_growth.py --spills 100 --mode feature --out memory.json

Runs the benchmark's topology (daq.bench.pipeline: sender -> builder -> 2 trigger workers
-> recorder + monitor, each its own process) for `--spills` spills and samples every
service's resident memory (VmRSS) every 0.1 s. Growth, per process, is the peak of the last
third of the run against the peak of the middle third: bounded buffers (the builder's queue,
up to `max_pending_events`; ZeroMQ's pipes, up to their high-water marks) fill during the
first part of a run at full speed and then stay flat; a leak keeps rising.
Exit status 1 when a process grew by more than `--allow-mib`, or the run lost events.
Writes a plot of RSS against time next to the JSON when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daq.bench import pipeline
from daq.launch import status_bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spills", type=int, default=100)
    ap.add_argument("--mode", choices=("feature", "waveform"), default="feature")
    ap.add_argument("--events", type=int, default=None,
                    help="events per spill (default: 1000000 feature, 200000 waveform)")
    ap.add_argument("--allow-mib", type=float, default=32.0,
                    help="growth allowed per process, MiB (default 32)")
    ap.add_argument("--out", type=Path, default=Path("memory.json"))
    a = ap.parse_args(argv)
    if a.spills < 10:
        ap.error("--spills must be at least 10 (growth compares thirds of the run)")
    events = a.events or (1_000_000 if a.mode == "feature" else 200_000)
    series: dict[str, list[tuple[float, int]]] = {}
    t0 = time.time()

    def sample(procs: list[Any]) -> None:
        now = time.time() - t0
        for p in procs:
            if p.popen.poll() is None:
                series.setdefault(p.name, []).append((now, status_bytes(p.popen.pid, "VmRSS")))
        print(f"\r{now:6.1f} s  " + "  ".join(
            f"{n} {s[-1][1] / 2**20:5.0f} MiB" for n, s in series.items()), end="",
            file=sys.stderr, flush=True)

    res = pipeline(a.mode, events, a.spills, on_sample=sample)
    print(file=sys.stderr)
    growth = {}
    for name, s in series.items():
        n = len(s)
        early = [r for _, r in s[n // 3: 2 * n // 3]]
        late = [r for _, r in s[2 * n // 3:]]
        growth[name] = {"middle_third_mib": round(max(early) / 2**20, 1),
                        "last_third_mib": round(max(late) / 2**20, 1),
                        "growth_mib": round((max(late) - max(early)) / 2**20, 1),
                        "samples": n,
                        # at the end of each tenth of the run: a bound reached flattens out
                        "tenths_mib": [round(s[min(n - 1, (k * n) // 10)][1] / 2**20)
                                       for k in range(1, 11)]}
    ok = res["lost_events"] == 0 and all(g["growth_mib"] <= a.allow_mib
                                         for g in growth.values())
    report = {"ok": ok, "mode": a.mode, "spills": a.spills, "events_per_spill": events,
              "events_per_s": round(res["events_per_s"]), "lost_events": res["lost_events"],
              "allow_mib": a.allow_mib, "processes": growth}
    a.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0 if ok else 1
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in series.items():
        ax.plot([t for t, _ in s], [r / 2**20 for _, r in s], label=name)
    ax.set_xlabel("time since start, s")
    ax.set_ylabel("resident memory, MiB")
    ax.set_title(f"{a.spills} spills, {a.mode} mode, {events} events/spill")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=100)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
