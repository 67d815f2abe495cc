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


def built_stream(mode: str = "feature", *, spills: int = 2, seed: int = 4,
                 generated_s: float = 0.003, change: dict | None = None, change_at: int = 1,
                 shadow: dict | None = None, slice_events: int = 512) -> list:
    """The builder's output for a simulated run: markers and built slices, in order.

    `change` is requested just before spill `change_at` starts (between spills); `shadow` is
    evaluated alongside from the first spill.
    """
    from daq.builder import EventBuilder
    from daq.wire import Kind, decode
    from simulators.frontend import FrontEnds

    g, cal = detector()
    cfg = SimConfig.parse({"mode": mode, "generated_s": generated_s, "signal_rate": 0.01,
                           "seed": seed, "slice_events": slice_events})
    builder = EventBuilder(g, calibration=cal.hash)
    if shadow is not None:
        builder.set_shadow_config(shadow)
    out: list = []
    for em in FrontEnds(Simulator(cfg, g, cal), spills=spills).run():
        msg = decode(em.frames())
        if (change is not None and msg.kind is Kind.SPILL_START and msg.spill == change_at):
            builder.set_trigger_config(change, "test")
            change = None
        out += builder.feed(msg, 0.0)
    out += builder.finish(0.0)
    return out
