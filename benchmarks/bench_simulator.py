"""Simulator generation speed, events per second on one core, in each readout mode.

Run:  python benchmarks/bench_simulator.py [--seconds 0.2] [--repeat 3]

Generates `--seconds` of a spill at the default 6e6 e-/spill (so the pileup is the real
one) and reports the best of `--repeat` passes, after a warm-up that compiles the
kernels; then what the boards send per event in that mode: hits (channels read out, all
five boards) and bytes (every board array, `ts` included, as on the wire without the
headers). Numbers depend on the machine and on what else runs on it; this is a benchmark,
not a test, and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from daq.geometry import load_calibration, load_geometry
from simulators.config import SimConfig
from simulators.generator import Simulator

#: mode label -> simulation settings
MODES: dict[str, dict[str, Any]] = {
    "feature": {"mode": "feature", "slice_events": 4096},
    "waveform": {"mode": "waveform", "slice_events": 1024},
    "waveform-zs": {"mode": "waveform", "zero_suppress": True, "slice_events": 1024},
}


def measure(mode: str, seconds: float, repeat: int) -> tuple[int, float, float, float]:
    """(events per pass, best events/s, hits/event, bytes/event) of one MODES entry."""
    geom = load_geometry()
    calib = load_calibration(geom)
    cfg = SimConfig.parse({**MODES.get(mode, {"mode": mode}), "generated_s": seconds})
    sim = Simulator(cfg, geom, calib)
    events = hits = nbytes = 0
    for s in sim.slices(sim.plan(99)):  # warm-up (compile or load the kernels) and volume
        events += s.count
        for board, arrays in s.boards.items():
            nch = geom.n_channels(board)
            hits += int(arrays["nhit"].sum()) if "nhit" in arrays else s.count * nch
            nbytes += s.ts.nbytes + sum(a.nbytes for a in arrays.values())
    best = float("inf")
    n = 0
    for r in range(repeat):
        plan = sim.plan(r)
        t0 = time.perf_counter()
        n = sum(s.count for s in sim.slices(plan))
        best = min(best, (time.perf_counter() - t0) / max(n, 1))
    return n, 1.0 / best, hits / max(events, 1), nbytes / max(events, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.2, help="spill seconds generated per pass")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    a = p.parse_args()
    print(f"cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    for mode in a.modes:
        events, rate, hits, nbytes = measure(mode, a.seconds, a.repeat)
        print(f"{mode:11s} {events:8d} events/pass  {rate / 1e6:6.3f} M events/s (best of "
              f"{a.repeat})  {hits:6.1f} hits/event  {nbytes:7.0f} bytes/event")


if __name__ == "__main__":
    main()
