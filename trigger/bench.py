"""Benchmark of the trigger's kernels: events/s on one core and on all cores, the NumPy
reference, and the memory-bandwidth bound for the same bytes (`na64daq bench` uses it).

Data: simulator waveforms (realistic occupancy and pileup), tiled to `--events` so that the
working set is well beyond the last-level cache, as at beam rate. The zero-suppressed
layouts are made from simulator data the way a digitiser suppresses (daq.hits.sparsify,
amplitude >= ZS_ADC): the waveform slices above, and the simulator's feature mode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numba
import numpy as np

from daq import hits
from daq.geometry import load_calibration, load_geometry
from simulators.config import SimConfig
from simulators.generator import Simulator
from trigger import kernels, reference
from trigger.config import TriggerConfig
from trigger.core import (
    TriggerParams,
    board_amplitudes,
    build_params,
    compute_features,
    decide,
    warm_up,
    window_amplitude,
)

SLICE = 4096
#: zero-suppression threshold of the suppressed layouts, ADC counts (docs/dataflow.md)
ZS_ADC = 6.0


def _best(fn: Callable[[], object], repeat: int,
          clock: Callable[[], float] = time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def _simulated(mode: str) -> list[dict[str, dict[str, np.ndarray]]]:
    g = load_geometry()
    cal = load_calibration(g)
    sim = Simulator(SimConfig.parse({"mode": mode, "generated_s": 0.004,
                                     "slice_events": SLICE, "seed": 2}), g, cal)
    return [s.boards for s in sim.slices(sim.plan(0))]


def _data(events: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for boards in _simulated("waveform"):
        for b, d in boards.items():
            parts.setdefault(f"{b}.wave", []).append(d["wave"])
    base = {k: np.concatenate(v) for k, v in parts.items()}
    reps = -(-events // len(next(iter(base.values()))))
    return {k: np.ascontiguousarray(np.tile(v, (reps, 1, 1))[:events]) for k, v in base.items()}


def _suppress_waves(sl: dict[str, np.ndarray], p: TriggerParams) -> dict[str, np.ndarray]:
    """Full-waveform slice arrays zero-suppressed: channels with max - pedestal >= ZS_ADC."""
    out: dict[str, np.ndarray] = {}
    boards = {b.name: b for b in p.boards}
    for name, wave in sl.items():
        amp = window_amplitude(wave, boards[name.rpartition(".")[0]])
        nhit, h = hits.sparsify(amp >= ZS_ADC, {"hit_wave": wave})
        board = name.rpartition(".")[0]
        out[f"{board}.nhit"] = nhit
        out.update({f"{board}.{k}": v for k, v in h.items()})
    return out


def _feature_hits(boards: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A feature-mode simulator slice (zero-suppressed hits) as built-slice arrays."""
    return {f"{b}.{k}": np.array(v) for b, d in boards.items() for k, v in d.items()}


def _count(sl: dict[str, np.ndarray]) -> int:
    return next(len(v) for k, v in sl.items() if k.endswith((".wave", ".nhit")))


def _nbytes(slices: list[dict[str, np.ndarray]]) -> int:
    return sum(v.nbytes for s in slices for v in s.values())


def _hits_per_event(slices: list[dict[str, np.ndarray]]) -> float:
    n = sum(len(s["ECAL.nhit"]) for s in slices)
    return sum(int(v.sum()) for s in slices for k, v in s.items() if k.endswith(".nhit")) / n


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

    zs_slices = [_suppress_waves(s, p) for s in slices]
    base = [_feature_hits(b) for b in _simulated("feature")]
    feat_slices = [{k: v.copy() for k, v in base[i % len(base)].items()}
                   for i in range(-(-n // SLICE))]
    n_feat = sum(_count(s) for s in feat_slices)

    def waveform(sl: dict[str, np.ndarray], be: ModuleType = kernels) -> None:
        board_amplitudes(sl, _count(sl), "waveform", p, be)

    def full(sl: dict[str, np.ndarray], mode: str = "waveform") -> None:
        decide(compute_features(sl, _count(sl), mode, p), p, run=1, spill=0, first=0)

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

    def waveform_zs() -> None:
        for s in zs_slices:
            full(s)

    def feature() -> None:
        for s in feat_slices:
            full(s, "feature")

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
    t_zs = _best(waveform_zs, repeat)
    t_feat = _best(feature, repeat)
    t_ref = _best(numpy_reference, max(1, repeat // 2))
    ref_events = _count(ref_slice)
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
        "feature_kernel_events_per_s": round(n_feat / t_feat),
        "feature_hits_per_event": round(_hits_per_event(feat_slices), 1),
        "feature_bytes_per_event": _nbytes(feat_slices) // n_feat,
        "waveform_zs_kernel_events_per_s": round(n / t_zs),
        "waveform_zs_hits_per_event": round(_hits_per_event(zs_slices), 1),
        "waveform_zs_bytes_per_event": _nbytes(zs_slices) // n,
    }




def kernel_ab(baseline: ModuleType, events: int = 16384, repeat: int = 5,
              rounds: int = 3) -> dict[str, list[float]]:
    """This tree's waveform kernels against `baseline` (trigger.kernels of another version),
    in one process on the same data, interleaved so that a busy machine slows both alike,
    and timed in this thread's CPU time (time.thread_time), so that other processes
    sharing the core do not count: per round, the best of `repeat` in M events/s (of CPU
    time) for full waveforms (the amplitudes, as
    waveform_kernel_events_per_s_1core) and zero-suppressed ones (the whole trigger, as
    waveform_zs_kernel_events_per_s). Raises AssertionError if the features differ."""
    g = load_geometry()
    cal = load_calibration(g)
    warm_up(g, cal)
    p = build_params(TriggerConfig(), g, cal)
    data = _data(events)
    slices = [{k: v[i:i + SLICE] for k, v in data.items()} for i in range(0, events, SLICE)]
    zs_slices = [_suppress_waves(s, p) for s in slices]
    for s in slices + zs_slices:
        fa = compute_features(s, _count(s), "waveform", p, baseline)
        fb = compute_features(s, _count(s), "waveform", p, kernels)
        for name in ("sums", "mult", "sat", "beam_amp", "beam_npulse"):
            assert np.array_equal(getattr(fa, name), getattr(fb, name)), name

    def full(be: ModuleType) -> Callable[[], None]:
        def run() -> None:
            for s in slices:
                board_amplitudes(s, _count(s), "waveform", p, be)
        return run

    def zs(be: ModuleType) -> Callable[[], None]:
        def run() -> None:
            for s in zs_slices:
                decide(compute_features(s, _count(s), "waveform", p, be), p, run=1, spill=0,
                       first=0)
        return run

    cases = {"full_baseline": full(baseline), "full": full(kernels),
             "zs_baseline": zs(baseline), "zs": zs(kernels)}
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            out[name].append(events / _best(fn, repeat, time.thread_time) / 1e6)
    return out
