"""Shared test data for the trigger tests: simulator slices as built-slice arrays."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np

from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from simulators.config import SimConfig
from simulators.generator import Simulator, Slice


@cache
def detector() -> tuple[Geometry, Calibration]:
    g = load_geometry()
    return g, load_calibration(g)


def built_arrays(s: Slice, n_boards: int = 5) -> dict[str, np.ndarray]:
    """A simulator slice as the arrays of a built slice (docs/dataflow.md)."""
    out = {"ts": s.ts, "missing": np.zeros(s.count, np.uint8)}
    for b, d in s.boards.items():
        for k, v in d.items():
            out[f"{b}.{k}"] = v
    return out


def sim_slices(mode: str, *, seed: int = 3, generated_s: float = 0.005,
               signal_rate: float = 1e-4, spill: int = 0, slice_events: int = 1024
               ) -> Iterator[Slice]:
    g, cal = detector()
    cfg = SimConfig.parse({"mode": mode, "generated_s": generated_s, "signal_rate": signal_rate,
                           "seed": seed, "slice_events": slice_events})
    sim = Simulator(cfg, g, cal)
    yield from sim.slices(sim.plan(spill))
