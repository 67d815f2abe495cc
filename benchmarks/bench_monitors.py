"""Monitor core speed: events per second through RunAnalysis.feed on one core.

Run:  python benchmarks/bench_monitors.py [--events 400000] [--slice 4096] [--repeat 3]

Synthetic features at the default 6e6 e-/spill pileup, fed as slices of `--slice` events
(the simulator's default slice), best of `--repeat` passes. A benchmark, not a test: it
asserts nothing, and the figure depends on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "monitors"))
from monitor_synth import spill_messages

from monitors.aggregate import RunAnalysis
from monitors.config import MonitorConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--slice", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    slices = max(1, a.events // a.slice)
    msgs, _ = spill_messages(np.random.default_rng(1), slices=slices, slice_events=a.slice)
    best = float("inf")
    for _ in range(a.repeat):
        ra = RunAnalysis(MonitorConfig())
        t0 = time.perf_counter()
        for m in msgs:
            ra.feed(m)
        best = min(best, time.perf_counter() - t0)
        assert len(ra.summaries) == 1
    n = slices * a.slice
    print(f"monitor core: {n} events in {slices} slices: {best * 1e3:.1f} ms, "
          f"{n / best / 1e6:.2f} M events/s, {best / slices * 1e6:.0f} us per slice")


if __name__ == "__main__":
    main()
