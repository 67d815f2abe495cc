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
mark within the first runs), times the runs: a leak of x MiB per run reads x (N - 1),
with its standard error from the scatter about the trend (`*_se_mib`). A process grew
when the trend exceeds `--allow-mib` by more than 3 standard errors: the builder's memory
between runs differs from run to run by up to ~150 MiB (what was queued when the run
stopped), so its trend alone read +127 or -130 MiB over 20 runs with no growth at all
(sessions 9 and 10), while a quiet process's error is a fraction of a MiB. A run's peak
is mostly that bounded backlog: it is reported (`peak_mib`, and the earlier verdict, the
largest later peak against the first, which read that noise as growth), not judged.
The price of the builder's scatter: over 20 runs it shows a leak only from ~15 MiB a run
(3 standard errors of ~5 MiB a run); the other services' from ~2 MiB a run.
Exit status 1 when a process grew, a run lost events, or a process was restarted. Draws RSS
against time, run boundaries marked, next to the JSON when matplotlib is installed
(`pip install -e '.[plots]'`).
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


def rise(values: Sequence[float], first: int) -> tuple[float, float]:
    """MiB over all the runs and its standard error: the least-squares slope of `values`
    (bytes per run) from run index `first` on, times the runs; a leak of x MiB per run
    reads x (N - 1). The error is the slope's, from the residuals (0 with 2 points)."""
    ys = [v / 2**20 for v in values[first:]]
    if len(ys) < 2:
        return 0.0, 0.0
    xs = range(len(ys))
    fit = statistics.linear_regression(xs, ys)
    runs = len(values) - 1
    if len(ys) < 3:
        return fit.slope * runs, 0.0
    mx = statistics.fmean(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    s2 = sum((y - fit.intercept - fit.slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    s2 /= len(ys) - 2
    return fit.slope * runs, (s2 / sxx) ** 0.5 * runs


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
        # steady state: the second half of the runs (arenas and bounded buffers reach
        # their high-water mark within the first runs, the builder's after several)
        (hg, hse), (mg, mse) = rise(held, len(held) // 2), rise(means, len(means) // 2)
        procs[name] = {
            "held_growth_mib": round(hg, 1), "held_growth_se_mib": round(hse, 1),
            "mean_growth_mib": round(mg, 1), "mean_growth_se_mib": round(mse, 1),
            "grew": hg - 3 * hse > a.allow_mib or mg - 3 * mse > a.allow_mib,
            "peak_mib": [round(x / 2**20) for x in peaks],
            "held_mib": [round(x / 2**20) for x in held],
            "mean_mib": [round(x / 2**20) for x in means],
            # the earlier verdict (largest later peak - first peak), for comparison
            "largest_peak_minus_first_mib": round((max(peaks[1:]) - peaks[0]) / 2**20, 1)
            if len(peaks) > 1 else 0.0,
            "samples": len(series[name])}
    ok = (res["lost_events"] == 0 and res["same_processes"]
          and not any(g["grew"] for g in procs.values()))
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
