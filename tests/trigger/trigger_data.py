"""Shared test data for the trigger tests: simulator slices as built-slice arrays."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np

from daq import hits
from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from simulators.config import SimConfig
from simulators.generator import Simulator, Slice
from trigger.config import TriggerConfig
from trigger.core import build_params, window_amplitude

#: zero-suppression threshold of the test data, ADC counts (docs/dataflow.md: the default)
ZS_ADC = 6.0
#: board layouts of a built slice (docs/dataflow.md): full waveforms, zero-suppressed
#: waveforms, feature hits
LAYOUTS = ("wave", "wave_zs", "feature")


@cache
def detector() -> tuple[Geometry, Calibration]:
    g = load_geometry()
    return g, load_calibration(g)


def zero_suppress(arrays: dict[str, np.ndarray], count: int, zs: float = ZS_ADC
                  ) -> dict[str, np.ndarray]:
    """Built-slice arrays with every dense board zero-suppressed at `zs`, as a digitiser does.

    Full waveforms `B.wave` become `B.nhit`/`B.hit_ch`/`B.hit_wave` (the channels whose
    window's maximum minus the calibration pedestal reaches zs, as the trigger reads them). Dense
    feature arrays `B.amp`/`B.tpeak`/`B.npulse` become
    feature hits (rounded amplitude >= zs; what random_slice makes). Anything else is
    passed on.
    """
    g, cal = detector()
    boards = {b.name: b for b in build_params(TriggerConfig(), g, cal).boards}
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        board, _, kind = name.rpartition(".")
        if kind == "wave":
            amp = window_amplitude(a, boards[board])
            nhit, hit = hits.sparsify(amp >= zs, {"hit_wave": a})
        elif kind == "amp":
            r = np.clip(np.round(a), -32768, 32767).astype(np.int16)
            t = np.clip(np.round(arrays[f"{board}.tpeak"] / hits.T_UNIT_NS), -32768, 32767)
            nhit, hit = hits.sparsify(r >= zs, {"hit_amp": r, "hit_t": t.astype(np.int16),
                                                "hit_np": arrays[f"{board}.npulse"]})
        elif kind in ("tpeak", "npulse"):
            continue
        else:
            out[name] = a
            continue
        assert len(nhit) == count
        out[f"{board}.nhit"] = nhit
        out.update({f"{board}.{k}": v for k, v in hit.items()})
    return out


def random_slice(rng: np.random.Generator, n: int, layout: str, sat_frac: float = 0.0
                 ) -> dict[str, np.ndarray]:
    """Built-slice arrays of `n` random events, every board in `layout` (LAYOUTS).

    About 30 % of the channels carry a pulse (exponential amplitudes, mean 400 ADC), the rest
    pedestal noise; `sat_frac` of the channels saturate.
    """
    g, cal = detector()
    samples = g.detector.samples
    arrays: dict[str, np.ndarray] = {"ts": np.arange(n, dtype=np.int64),
                                     "missing": np.zeros(n, np.uint8)}
    for b in g.boards:
        nch = len(b.channels)
        hit = rng.random((n, nch)) < 0.3
        amp = np.where(hit, rng.exponential(400.0, (n, nch)), rng.normal(0, 2, (n, nch)))
        limit = g.detector.adc_max - cal.pedestal[b.name]
        amp = np.where(rng.random((n, nch)) < sat_frac, limit, amp)
        if layout == "feature":
            arrays[f"{b.name}.amp"] = np.minimum(amp, limit).astype(np.float32)
            arrays[f"{b.name}.tpeak"] = rng.normal(0, 3, (n, nch)).astype(np.float32)
            arrays[f"{b.name}.npulse"] = (hit * rng.integers(1, 4, (n, nch))).astype(np.uint8)
            continue
        w = 400.0 + rng.normal(0, 2, (n, nch, samples))
        t0 = rng.integers(0, samples - 3, (n, nch))
        for k, f in enumerate((0.5, 1.0, 0.7, 0.3)):
            np.put_along_axis(w, (t0 + k)[..., None], np.take_along_axis(
                w, (t0 + k)[..., None], 2) + (amp * f)[..., None], 2)
        arrays[f"{b.name}.wave"] = np.ascontiguousarray(
            np.clip(w, 0, 4095).astype(np.int16).transpose(0, 2, 1))
    return arrays if layout == "wave" else zero_suppress(arrays, n)


def built_arrays(s: Slice) -> dict[str, np.ndarray]:
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


def window_in(drawn: tuple[int, int], samples: int) -> tuple[int, int]:
    """A reconstruction window [w0, w1) of a trace of `samples` from two drawn integers:
    at least one sample, within the trace (as daq.geometry.reco_window gives)."""
    w0 = min(drawn[0], samples - 1)
    return w0, max(w0 + 1, min(drawn[1], samples))


def channel_pedestals(ped: float, nch: int) -> np.ndarray:
    """Calibration pedestals of `nch` channels around `ped`, not all equal (float64)."""
    return ped + 0.25 * (np.arange(nch) % 3)
