"""Simulator generation speed, events per second on one core, in each readout mode.

Run:  python benchmarks/bench_simulator.py [--seconds 0.2] [--repeat 3]

Generates `--seconds` of a spill at the default 6e6 e-/spill (so the pileup is the real
one) and reports the best of `--repeat` passes, after a warm-up that compiles the
kernels. Numbers depend on the machine and on what else runs on it; this is a benchmark,
not a test, and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

from daq.geometry import load_calibration, load_geometry
from simulators.config import SimConfig
from simulators.generator import Simulator


def measure(mode: str, seconds: float, repeat: int) -> tuple[int, float]:
    geom = load_geometry()
    calib = load_calibration(geom)
    cfg = SimConfig.parse({"mode": mode, "generated_s": seconds,
                           "slice_events": 4096 if mode == "feature" else 1024})
    sim = Simulator(cfg, geom, calib)
    for _ in sim.slices(sim.plan(99)):  # warm-up: compile or load the cached kernels
        pass
    best = float("inf")
    events = 0
    for r in range(repeat):
        plan = sim.plan(r)
        t0 = time.perf_counter()
        events = sum(s.count for s in sim.slices(plan))
        best = min(best, (time.perf_counter() - t0) / max(events, 1))
    return events, 1.0 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.2, help="spill seconds generated per pass")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    print(f"cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    for mode in ("feature", "waveform"):
        events, rate = measure(mode, a.seconds, a.repeat)
        print(f"{mode:9s} {events:8d} events/pass  {rate / 1e6:6.3f} M events/s (best of "
              f"{a.repeat})")


if __name__ == "__main__":
    main()
