"""Shared builders for the simulator tests (not a conftest: plain functions, explicit use)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from daq.hits import densify
from simulators.config import FaultConfig, SimConfig
from simulators.generator import Simulator


@cache
def detector() -> tuple[Geometry, Calibration]:
    geom = load_geometry()
    return geom, load_calibration(geom)


def simulator(faults: dict[str, Any] | None = None, **cfg: Any) -> Simulator:
    geom, calib = detector()
    return Simulator(SimConfig.parse(cfg), geom, calib, FaultConfig.parse(faults or {}))


def run_spill(sim: Simulator, spill: int = 0) -> tuple[dict[str, dict[str, np.ndarray]],
                                                      dict[str, np.ndarray]]:
    """Concatenated readout (board -> arrays) and truth of one spill."""
    slices = list(sim.slices(sim.plan(spill)))
    boards = {b: {k: np.concatenate([s.boards[b][k] for s in slices])
                  for k in slices[0].boards[b]} for b in sim.board_names}
    truth = {k: np.concatenate([s.truth[k] for s in slices]) for k in slices[0].truth}
    return boards, truth


def dense(arrays: dict[str, np.ndarray], name: str, nch: int) -> np.ndarray:
    """(events, nch) of a zero-suppressed board's hit array `name`, 0 where no hit."""
    return densify(arrays["nhit"], arrays["hit_ch"], arrays[name], nch)


def alone_in_trace(t: np.ndarray, reach: tuple[float, float]) -> np.ndarray:
    """Per beam particle (`t`: every one of a spill, sorted, ns): no other beam particle's
    pulse reaches its trace (`reach`: Simulator.reach of a board)."""
    before, after = reach
    gap_before = np.diff(t, prepend=-np.inf)
    gap_after = np.diff(t, append=np.inf)
    return (gap_before >= before) & (gap_after >= after)
