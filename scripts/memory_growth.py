"""Memory over consecutive runs of the standing system: does any process grow?

    python scripts/memory_growth.py --runs 20 --spills 10 --mode feature --out memory.json

Starts the standing system once (daq.bench.pipeline: `na64daq up` with run control, the
bench's front end -> builder -> 2 trigger workers -> recorder + monitor, each its own
process), takes `--runs` runs of `--spills` spills through run control with the same
processes, and samples every process's resident memory (VmRSS) every 0.1 s. A run's
window is from its first message sent to the first message of the next (the pause between
runs belongs to the run before). Two figures per process, each allowed `--allow-mib`:
- held growth: the memory a process keeps between runs (the lowest sample of a run's
  window; every service gives a run's freed memory back at stop);
- mean growth: the time-averaged RSS of each run's window;
each as the least-squares trend over the second half of the runs (steady state: bounded
buffers, the builder's queue up to `max_pending_events` / `max_pending_bytes`, ZeroMQ's
pipes up to their high-water marks, and the allocator's arenas reach their high-water
mark within the first runs), times the runs: a leak of x MiB per run reads x (N - 1). A
run's peak is mostly that bounded backlog, different every run by tens of MiB in the
builder: it is reported (`peak_mib`, and the earlier verdict, the largest later peak
against the first, which read that noise as growth), not judged.
Exit status 1 when a process grew by more than `--allow-mib`, a run lost events, or a
process was restarted. Draws RSS against time, run boundaries marked, next to the JSON
when matplotlib is installed (`pip install -e '.[plots]'`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daq.bench import pipeline
from daq.launch import status_bytes

Series = dict[str, list[tuple[float, int]]]


def per_run(series: Series, starts: list[float]) -> dict[str, list[tuple[int, int, float]]]:
    """Each process's (peak, held, mean) RSS in each run's window (`starts`: each run's
    first message, seconds on the series' clock); runs without samples are left out. Held
    is the window's lowest sample: what the process keeps between runs once a run's
    backlog is gone (every service gives the freed memory back at stop, daq.service); mean
    is the window's average (samples every 0.1 s)."""
    out: dict[str, list[tuple[int, int, float]]] = {}
    for name, s in series.items():
        runs = []
        for k, t0 in enumerate(starts):
            t1 = starts[k + 1] if k + 1 < len(starts) else float("inf")
            window = [r for t, r in s if t0 <= t < t1]
            if window:
                runs.append((max(window), min(window), statistics.fmean(window)))
        out[name] = runs
    return out


def rise(values: Sequence[float], first: int) -> float:
    """MiB over all the runs: the least-squares slope of `values` (bytes per run) from run
    index `first` on, times the runs; a leak of x MiB per run reads x (N - 1)."""
    ys = [v / 2**20 for v in values[first:]]
    if len(ys) < 2:
        return 0.0
    return statistics.linear_regression(range(len(ys)), ys).slope * (len(values) - 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="consecutive runs (default 20)")
    ap.add_argument("--spills", type=int, default=10, help="spills per run (default 10)")
    ap.add_argument("--mode", choices=("feature", "waveform"), default="feature")
    ap.add_argument("--events", type=int, default=None,
                    help="events per spill (default: 1000000 feature, 200000 waveform)")
    ap.add_argument("--allow-mib", type=float, default=32.0,
                    help="growth allowed per process, MiB (default 32)")
    ap.add_argument("--out", type=Path, default=Path("memory.json"))
    a = ap.parse_args(argv)
    if a.runs < 2 or a.spills < 1:
        ap.error("--runs must be at least 2 (growth compares later runs with the first) "
                 "and --spills at least 1")
    events = a.events or (1_000_000 if a.mode == "feature" else 200_000)
    series: Series = {}
    t0 = time.time()
    shown = [0.0]

    def sample(procs: list[Any]) -> None:
        now = time.time() - t0
        for p in procs:
            if p.popen.poll() is None:
                series.setdefault(p.name, []).append((now, status_bytes(p.popen.pid, "VmRSS")))
        if now - shown[0] >= 1.0:
            shown[0] = now
            print(f"\r{now:6.1f} s  " + "  ".join(
                f"{n} {s[-1][1] / 2**20:4.0f}" for n, s in series.items()) + " MiB", end="",
                file=sys.stderr, flush=True)

    res = pipeline(a.mode, events, a.spills, runs=a.runs, on_sample=sample)
    print(file=sys.stderr)
    runs = res["runs"]
    starts = [r["t0"] - t0 for r in runs]
    procs = {}
    for name, pr in per_run(series, starts).items():
        peaks, held, means = [p for p, _, _ in pr], [h for _, h, _ in pr], [m for *_, m in pr]
        procs[name] = {
            # steady state: the second half of the runs (arenas and bounded buffers reach
            # their high-water mark within the first runs, the builder's after several)
            "held_growth_mib": round(rise(held, len(held) // 2), 1),
            "mean_growth_mib": round(rise(means, len(means) // 2), 1),
            "peak_mib": [round(x / 2**20) for x in peaks],
            "held_mib": [round(x / 2**20) for x in held],
            "mean_mib": [round(x / 2**20) for x in means],
            # the earlier verdict (largest later peak - first peak), for comparison
            "largest_peak_minus_first_mib": round((max(peaks[1:]) - peaks[0]) / 2**20, 1)
            if len(peaks) > 1 else 0.0,
            "samples": len(series[name])}
    ok = (res["lost_events"] == 0 and res["same_processes"]
          and all(g["held_growth_mib"] <= a.allow_mib and g["mean_growth_mib"] <= a.allow_mib
                  for g in procs.values()))
    report = {"ok": ok, "mode": a.mode, "runs": a.runs, "spills": a.spills,
              "events_per_spill": events, "run_numbers": res["run_numbers"],
              "same_processes": res["same_processes"], "pids": res["pids"],
              "events_per_s": [round(r["events_per_s"]) for r in runs],
              "lost_events": res["lost_events"], "allow_mib": a.allow_mib,
              "processes": procs}
    a.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0 if ok else 1
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, s in series.items():
        ax.plot([t for t, _ in s], [r / 2**20 for _, r in s], label=name, lw=0.8)
    for k, (r, t) in enumerate(zip(runs, starts, strict=True)):
        ax.axvline(t, color="grey", lw=0.5, ls=":")
        if k == 0 or len(runs) <= 20 or k % 5 == 0:
            ax.text(t, 1.0, str(r["run"]), transform=ax.get_xaxis_transform(), fontsize=7,
                    ha="left", va="bottom", color="grey")
    ax.set_xlabel("time since start, s (dotted: a run's first message; its number above)")
    ax.set_ylabel("resident memory, MiB")
    ax.set_title(f"{a.runs} runs of {a.spills} spills, {a.mode} mode, {events} events/spill",
                 pad=14)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=100)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
