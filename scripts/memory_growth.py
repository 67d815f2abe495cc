"""Memory over consecutive runs of the standing system: does any process grow?

    python scripts/memory_growth.py --runs 20 --spills 10 --mode feature --out memory.json

Starts the standing system once (daq.bench.pipeline: `na64daq up` with run control, the
bench's front end -> builder -> 2 trigger workers -> recorder + monitor, each its own
process), takes `--runs` runs of `--spills` spills through run control with the same
processes, and samples every process's resident memory (VmRSS) every 0.1 s. A run's
window is from its first message sent to the first message of the next (the pause between
runs belongs to the run before). Growth, per process, is the largest peak of a later run
against the peak of the first run: bounded buffers (the builder's queue, up to
`max_pending_events` / `max_pending_bytes`; ZeroMQ's pipes, up to their high-water marks)
fill during the first run at full speed and then stay flat; a leak, or state kept per
run, keeps rising from run to run.
Exit status 1 when a process grew by more than `--allow-mib`, a run lost events, or a
process was restarted. Draws RSS against time, run boundaries marked, next to the JSON
when matplotlib is installed (`pip install -e '.[plots]'`).
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

Series = dict[str, list[tuple[float, int]]]


def per_run(series: Series, starts: list[float]) -> dict[str, list[int]]:
    """Each process's peak RSS in each run's window (`starts`: each run's first message,
    seconds on the series' clock); runs without samples are left out."""
    out: dict[str, list[int]] = {}
    for name, s in series.items():
        peaks = []
        for k, t0 in enumerate(starts):
            t1 = starts[k + 1] if k + 1 < len(starts) else float("inf")
            window = [r for t, r in s if t0 <= t < t1]
            if window:
                peaks.append(max(window))
        out[name] = peaks
    return out


def growth(peaks: list[int]) -> float:
    """The largest peak of a later run against the first run's peak, MiB."""
    if len(peaks) < 2:
        return 0.0
    return (max(peaks[1:]) - peaks[0]) / 2**20


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
    peaks = per_run(series, starts)
    procs = {name: {"growth_mib": round(growth(p), 1),
                    "first_run_mib": round(p[0] / 2**20, 1) if p else None,
                    "runs_mib": [round(x / 2**20) for x in p], "samples": len(series[name])}
             for name, p in peaks.items()}
    ok = (res["lost_events"] == 0 and res["same_processes"]
          and all(g["growth_mib"] <= a.allow_mib for g in procs.values()))
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
