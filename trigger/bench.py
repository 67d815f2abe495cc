"""Benchmark of the trigger's waveform kernel: events/s on one core and on all cores, the NumPy
reference, and the memory-bandwidth bound for the same bytes (`na64daq bench` uses it).

Data: simulator waveforms (realistic occupancy and pileup), tiled to `--events` so that the
working set is well beyond the last-level cache, as at beam rate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numba
import numpy as np

from daq.geometry import load_calibration, load_geometry
from simulators.config import SimConfig
from simulators.generator import Simulator
from trigger import kernels, reference
from trigger.config import TriggerConfig
from trigger.core import board_amplitudes, build_params, compute_features, decide, warm_up

SLICE = 4096


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _data(events: int) -> dict[str, np.ndarray]:
    g = load_geometry()
    cal = load_calibration(g)
    sim = Simulator(SimConfig.parse({"mode": "waveform", "generated_s": 0.004,
                                     "slice_events": SLICE, "seed": 2}), g, cal)
    parts: dict[str, list[np.ndarray]] = {}
    for s in sim.slices(sim.plan(0)):
        for b, d in s.boards.items():
            parts.setdefault(f"{b}.wave", []).append(d["wave"])
    base = {k: np.concatenate(v) for k, v in parts.items()}
    reps = -(-events // len(next(iter(base.values()))))
    return {k: np.ascontiguousarray(np.tile(v, (reps, 1, 1))[:events]) for k, v in base.items()}


@numba.njit(nogil=True, cache=True)
def _read_all(words: np.ndarray) -> np.uint64:
    acc = np.uint64(0)
    for i in range(words.shape[0]):
        acc ^= words[i]
    return acc


def kernel_bench(events: int = 16384, repeat: int = 5) -> dict[str, float | int]:
    """The figures, as a dict (see the module docstring)."""
    g = load_geometry()
    cal = load_calibration(g)
    warm_up(g, cal)
    p = build_params(TriggerConfig(), g, cal)
    data = _data(events)
    n = events
    nbytes = sum(v.nbytes for v in data.values())
    slices = [{k: v[i:i + SLICE] for k, v in data.items()} for i in range(0, n, SLICE)]

    def waveform(sl: dict[str, np.ndarray], be: ModuleType = kernels) -> None:
        board_amplitudes(sl, len(next(iter(sl.values()))), "waveform", p, be)

    def full(sl: dict[str, np.ndarray]) -> None:
        count = len(next(iter(sl.values())))
        decide(compute_features(sl, count, "waveform", p), p, run=1, spill=0, first=0)

    cores = os.cpu_count() or 1
    pool = ThreadPoolExecutor(cores)
    ref_slice = slices[0]
    words = [v.reshape(-1).view(np.uint64) for v in data.values()]
    dst = {k: np.empty_like(v) for k, v in data.items()}
    _read_all(words[0][:8])

    def one_core() -> None:
        for s in slices:
            waveform(s)

    def all_cores() -> None:
        list(pool.map(waveform, slices))

    def full_trigger() -> None:
        for s in slices:
            full(s)

    def numpy_reference() -> None:
        waveform(ref_slice, reference)

    def read_bytes() -> None:
        for w in words:
            _read_all(w)

    def copy_bytes() -> None:
        for k, v in data.items():
            np.copyto(dst[k], v)

    t_one = _best(one_core, repeat)
    t_all = _best(all_cores, repeat)
    t_full = _best(full_trigger, repeat)
    t_ref = _best(numpy_reference, max(1, repeat // 2))
    ref_events = len(next(iter(ref_slice.values())))
    t_read = _best(read_bytes, repeat)
    t_copy = _best(copy_bytes, repeat)
    pool.shutdown()
    read_bw = nbytes / t_read
    bound = read_bw / (nbytes / n)
    one = n / t_one
    return {
        "events": n, "bytes_per_event": nbytes // n, "cores": cores, "slice_events": SLICE,
        "waveform_kernel_events_per_s_1core": round(one),
        "waveform_kernel_events_per_s_all_cores": round(n / t_all),
        "full_trigger_events_per_s_1core": round(n / t_full),
        "numpy_reference_events_per_s": round(ref_events / t_ref),
        "speedup_vs_reference_1core": round(one / (ref_events / t_ref), 1),
        "memory_read_bandwidth_gb_s": round(read_bw / 1e9, 2),
        "memory_copy_bandwidth_gb_s": round(2 * nbytes / t_copy / 1e9, 2),
        "bandwidth_bound_events_per_s": round(bound),
        "fraction_of_bound_1core": round(one / bound, 3),
    }


