"""Digitisation with pileup: pulse shapes, gates, noise, and the waveform-mode kernels.

For event i and board b, the particles j whose pulse reaches the board's trace are in its
gate (`trace_reach`: from ~10 peaking times before the first sample to the last sample);
each adds its own deposits' pulses at its own offset t_j - t_i. `waveforms` gives MSADC
samples of every channel, `waveform_hits` those of the channels that read something (zero
suppression); feature mode (what a digitiser FPGA computes per channel) is in
simulators/features.py.
The NumPy references below are what tests hold the kernels against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from simulators.jit import inline, kernel

MAX_PULSES = 64  # pulses per channel and gate the feature kernel keeps (pileup beyond: ignored)


@dataclass(frozen=True)
class PulseShape:
    """CR-RC^n pulse: f(x) = (x/tp)^n exp(n (1 - x/tp)) for x > 0, peak 1 at x = tp."""

    tp_ns: float  # time from pulse start to peak
    order: float  # n

    def __call__(self, dt_from_peak: np.ndarray) -> np.ndarray:
        x = np.asarray(dt_from_peak, np.float64) / self.tp_ns + 1.0
        return np.where(x > 0, np.maximum(x, 0) ** self.order * np.exp(self.order * (1 - x)), 0.0)


FAST = PulseShape(tp_ns=10.0, order=2.0)  # beam counters, shaped (geometry: BEAM pulse_tp_ns)
SLOW = PulseShape(tp_ns=20.0, order=2.0)  # calorimeters, SRD, VETO (the geometry default)


class Sampling(NamedTuple):
    """The digitiser's clock, from the geometry's [detector]: where the samples fall."""

    samples: int  # samples per trace
    sample_ns: float  # sample spacing
    trigger_sample: int  # the sample an in-time pulse peaks at
    #: the board's reconstruction window, samples [first, last) (daq.geometry.reco_window):
    #: amplitudes and pulses come from it; None: the whole trace
    window: tuple[int, int] | None = None

    @property
    def span(self) -> tuple[int, int]:
        """The samples amplitudes and pulses come from: the window, or the whole trace."""
        return self.window if self.window is not None else (0, self.samples)


TABLE_STEP_NS = 0.01  # pulse-shape table step; linear interpolation error < 0.01 ADC
TABLE_SPAN = 10.0  # table covers 10 tp after the pulse start (shape < 2e-6 beyond)


def shape_table(shape: PulseShape) -> np.ndarray:
    """The pulse shape from its start to TABLE_SPAN tp, every TABLE_STEP_NS (for the kernel)."""
    x = np.arange(0.0, TABLE_SPAN * shape.tp_ns, TABLE_STEP_NS)
    return np.asarray(shape(x - shape.tp_ns), np.float64)


@inline
def shape_at(dt_from_peak: float, table: np.ndarray, tp: float) -> float:
    u = (dt_from_peak + tp) / TABLE_STEP_NS
    if u < 0.0:
        return 0.0
    k = int(u)
    if k + 1 >= table.shape[0]:
        return 0.0
    w = u - k
    return table[k] * (1.0 - w) + table[k + 1] * w


@kernel
def _waveform_kernel(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     dep_self: np.ndarray, table: np.ndarray, intime: np.ndarray,
                     qphase: np.ndarray, phases: np.ndarray, tp: float,
                     pedestal: np.ndarray, noise: np.ndarray, noise_int: np.ndarray,
                     offsets: np.ndarray, sample_ns: float, trig_ns: float, adc_max: float,
                     w0: int, w1: int, zs: float, wave: np.ndarray, nhit: np.ndarray,
                     hit_ch: np.ndarray, hit_wave: np.ndarray) -> int:
    # wave is (count, samples, nch): one event of the board is one contiguous block, and so
    # is its noise window. With integer pedestals (noise_int non-empty) a sample without
    # pulse is pedestal + round(noise), exactly floor(ped + noise + 0.5), in int32 over the
    # whole block; only the samples a pulse reaches are computed in float64.
    # Zero suppression (nhit has count entries): wave is one (1, samples, nch) block that
    # each event is written to; its hits are copied out while it is in cache, at the top
    # of the next pass (an event ends in one of several `continue`s).
    n = ev.shape[0]
    ns, nch = wave.shape[1], wave.shape[2]
    suppress = nhit.shape[0] > 0
    flat = wave.reshape(wave.shape[0] * ns * nch)
    int_ped = noise_int.shape[0] > 0
    pedt = np.empty(ns * nch, np.int32)
    pedf = np.empty(ns * nch)  # the pedestal of each sample of the block
    for q in range(ns * nch):
        pedf[q] = pedestal[q % nch]
        pedt[q] = np.int32(pedestal[q % nch]) if int_ped else 0
    buf = np.empty(ns)
    a = np.empty(nch)
    dg = np.empty((MAX_PULSES, nch), np.float32)
    sh = np.empty((MAX_PULSES, ns))
    mx = np.empty((ns + 1) // 2 * nch, np.int16)  # zero suppression: the largest sample
    amax = np.int32(adc_max)
    size = np.uint64(ns * nch)
    nh = 0  # hits so far
    for e in range(n + 1 if suppress else n):
        if suppress and e > 0:
            # the previous event's channels whose largest sample of the reconstruction
            # window (samples w0 .. w1 - 1) minus the calibration pedestal reaches zs, as the
            # trigger reads its amplitude (trigger.kernels.wave_board): a kept channel has a
            # trigger amplitude >= zs
            _fold_max(flat[w0 * nch:w1 * nch], w1 - w0, nch, mx)
            nh0 = nh
            for c in range(nch):
                if mx[c] - pedestal[c] >= zs:
                    hit_ch[nh] = c
                    for s in range(ns):
                        hit_wave[nh, s] = flat[np.uint64(s * nch + c)]
                    nh += 1
            nhit[e - 1] = nh - nh0
        if e == n:
            break
        i = ev[e]
        qp = qphase[e]  # the beam phase: the in-time pulse peaks phases[qp] after its sample
        trig_e = trig_ns + phases[qp]
        w = 0 if suppress else e
        off = np.uint64(offsets[e])  # unsigned: no wraparound check, the loops vectorise
        base = np.uint64(w) * size
        single = hi[e] - lo[e] == 1  # only the in-time particle (most events)
        nact = 0
        for c in range(nch):
            d = dep_self[i, c]
            nact += d > 0.0
            a[c] = d if single and d > 0.0 else 0.0
        # integers pay off on quiet boards; a board with several pulses (an ECAL shower,
        # the beam counters) is faster in one float pass over the rows
        if int_ped and nact <= 2:
            for q in range(size):
                v = pedt[q] + np.int32(noise_int[off + q])
                flat[base + q] = min(max(v, np.int32(0)), amax)
            if single:
                for c in range(nch):
                    d = dep_self[i, c]
                    if d > 0.0:
                        for s in range(ns):
                            p = intime[qp, s]
                            if p != 0.0:  # before the pulse starts: the quiet value
                                k = off + np.uint64(s * nch + c)
                                v2 = np.floor(pedestal[c] + noise[k] + d * p + 0.5)
                                wave[w, s, c] = min(max(v2, 0.0), adc_max)
                continue
        elif single:
            for s in range(ns):
                row = off + np.uint64(s * nch)
                p = intime[qp, s]
                for c in range(np.uint64(nch)):
                    v2 = np.floor(pedestal[c] + noise[row + c] + a[c] * p + 0.5)
                    wave[w, s, c] = min(max(v2, 0.0), adc_max)
            continue
        else:  # pileup, before its channels are redone: one pass over the block
            for q in range(size):
                v2 = np.floor(pedf[q] + noise[off + q] + 0.5)
                flat[base + q] = min(max(v2, 0.0), adc_max)
        m = hi[e] - lo[e]
        if m <= MAX_PULSES:  # pileup: each particle's pulse shape once, for all channels
            _gate_pulses(i, lo[e], hi[e], t, dep_self, table, tp, sample_ns, trig_e, dg, sh)
            for c in range(nch):
                quiet = True
                for jl in range(m):
                    if dg[jl, c] > 0.0:
                        quiet = False
                if quiet:
                    continue
                for s in range(ns):
                    buf[s] = pedestal[c] + noise[off + np.uint64(s * nch + c)]
                for jl in range(m):
                    d = dg[jl, c]
                    if d > 0.0:  # outside the table sh is 0.0: adding d * 0.0 changes nothing
                        for s in range(ns):
                            buf[s] += d * sh[jl, s]
                for s in range(ns):
                    v2 = np.floor(buf[s] + 0.5)
                    wave[w, s, c] = min(max(v2, 0.0), adc_max)
            continue
        for c in range(nch):  # a very crowded gate: channel by channel
            if not _quiet(c, lo[e], hi[e], dep_self):
                _signal_channel(i, c, lo[e], hi[e], t, dep_self, table, tp, pedestal[c], noise,
                                offsets[e] + c, nch, sample_ns, trig_e, adc_max, buf,
                                wave[w, :, c])
    return nh


@kernel
def _fold_max(flat: np.ndarray, rows: int, nch: int, out: np.ndarray) -> None:
    """The largest of the `rows` rows of a (rows, nch) block, per channel, into out[:nch],
    by halving the rows: every loop runs over a contiguous run of rows x nch / 2 values,
    which vectorises whatever nch is (as trigger.kernels._fold_max)."""
    h = (rows + 1) // 2
    m = np.uint64((rows - h) * nch)
    off = np.uint64(h * nch)
    for j in range(m):
        out[j] = max(flat[j], flat[off + j])
    for j in range(m, off):
        out[j] = flat[j]
    while h > 1:
        rows = h
        h = (rows + 1) // 2
        m = np.uint64((rows - h) * nch)
        off = np.uint64(h * nch)
        for j in range(m):
            out[j] = max(out[j], out[off + j])


@kernel
def _gate_pulses(i: int, lo: int, hi: int, t: np.ndarray, dep_self: np.ndarray,
                 table: np.ndarray, tp: float, sample_ns: float, trig_ns: float,
                 dg: np.ndarray, sh: np.ndarray) -> None:
    """For each particle jl of the gate: its deposit per channel dg[jl] and its pulse at
    every sample sh[jl] (what `_signal_channel` adds per unit deposit)."""
    ns = sh.shape[1]
    nch = dep_self.shape[1]
    ntab = table.shape[0]
    for jl in range(hi - lo):
        j = lo + jl
        for c in range(nch):
            dg[jl, c] = dep_self[j, c]
        start = trig_ns + (t[j] - t[i]) - tp
        s0 = max(0, int(np.ceil(start / sample_ns)))
        for s in range(ns):
            sh[jl, s] = 0.0
        for s in range(s0, ns):
            u = (s * sample_ns - start) / TABLE_STEP_NS
            k = int(u)
            if k + 1 >= ntab:
                break
            w = u - k
            sh[jl, s] = table[k] * (1.0 - w) + table[k + 1] * w


@kernel
def _quiet(c: int, lo: int, hi: int, dep_self: np.ndarray) -> bool:
    for j in range(lo, hi):  # noqa: SIM110 (numba compiles loops, not generator expressions)
        if dep_self[j, c] > 0.0:
            return False
    return True


@kernel
def _signal_channel(i: int, c: int, lo: int, hi: int, t: np.ndarray, dep_self: np.ndarray,
                    table: np.ndarray, tp: float, ped: float, noise: np.ndarray, base: int,
                    stride: int, sample_ns: float, trig_ns: float, adc_max: float, buf: np.ndarray,
                    out: np.ndarray) -> None:
    """Samples of one channel that has pulses (kept out of line so the quiet loop stays tight).

    Sample s of the channel reads noise[base + s * stride].
    """
    ns = out.shape[0]
    ntab = table.shape[0]
    for s in range(ns):
        buf[s] = ped + noise[base + s * stride]
    for j in range(lo, hi):
        a = dep_self[j, c]
        if a <= 0.0:
            continue
        start = trig_ns + (t[j] - t[i]) - tp  # when this pulse begins
        s0 = max(0, int(np.ceil(start / sample_ns)))
        # the samples the table covers, found first so the loop has no exit and vectorises
        s1 = s0
        while s1 < ns and int((s1 * sample_ns - start) / TABLE_STEP_NS) + 1 < ntab:
            s1 += 1
        for s in range(s0, s1):
            u = (s * sample_ns - start) / TABLE_STEP_NS
            k = int(u)
            w = u - k
            buf[s] += a * (table[k] * (1.0 - w) + table[k + 1] * w)
    for s in range(ns):
        v = np.floor(buf[s] + 0.5)
        out[s] = min(max(v, 0.0), adc_max)


@kernel
def _gates_kernel(t: np.ndarray, ev: np.ndarray, before: float, after: float, lo: np.ndarray,
                  hi: np.ndarray) -> None:
    # one sweep of two pointers over the sorted times (ev ascending): what searchsorted
    # finds by bisection, without its cache misses
    a = 0
    b = 0
    n = t.shape[0]
    for e in range(ev.shape[0]):
        x = t[ev[e]]
        left = x - before
        right = x + after
        while a < n and t[a] <= left:
            a += 1
        while b < n and t[b] < right:
            b += 1
        lo[e] = a
        hi[e] = b


def gates(t: np.ndarray, ev: np.ndarray, window_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """Index range [lo, hi) of the particles with |t_j - t_i| < window/2, for each event i.

    `t` sorted; `ev` ascending takes one compiled sweep, otherwise `gates_reference`.
    """
    if len(ev) > 1 and np.any(ev[1:] < ev[:-1]):
        return gates_reference(t, ev, window_ns)
    return spans(t, ev, window_ns / 2, window_ns / 2)


def spans(t: np.ndarray, ev: np.ndarray, before_ns: float, after_ns: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """Index range [lo, hi) of the particles with -before < t_j - t_i < after, for each
    event i (`t` sorted, `ev` ascending): one compiled sweep of two pointers."""
    lo = np.empty(len(ev), np.int64)
    hi = np.empty(len(ev), np.int64)
    _gates_kernel(t, ev.astype(np.int64, copy=False), before_ns, after_ns, lo, hi)
    return lo, hi


def trace_reach(tp_ns: float, sampling: Sampling, samples: tuple[int, int] | None = None
                ) -> tuple[float, float]:
    """(before, after), ns: a particle whose offset from the event's is within
    (-before, after) has a pulse at some of the `samples` [first, last) of the event's
    trace (default: all of them). The in-time pulse peaks up to a sample after the trigger
    sample (the beam phase); a pulse starts tp before its peak and the kernels follow it
    TABLE_SPAN tp from its start (beyond, the shape is < 2e-6: nothing of it is added)."""
    first, last = (0, sampling.samples) if samples is None else samples
    before = (sampling.trigger_sample + 1 - first) * sampling.sample_ns + (TABLE_SPAN - 1) * tp_ns
    after = (last - 1 - sampling.trigger_sample) * sampling.sample_ns + tp_ns
    return before, after


def gates_reference(t: np.ndarray, ev: np.ndarray, window_ns: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """NumPy version of `gates` (binary search; any order of `ev`)."""
    half = window_ns / 2
    lo = np.searchsorted(t, t[ev] - half, side="right")
    hi = np.searchsorted(t, t[ev] + half, side="left")
    return lo.astype(np.int64), hi.astype(np.int64)


def noise_pool(rng: np.random.Generator, noise: float, size: int) -> np.ndarray:
    """Gaussian noise (float32) that kernels read at a random offset per event.

    An event reads a window of nch x samples values; windows of different events overlap
    shifted, so no two channels or samples share their noise within an event.
    """
    return rng.normal(0.0, noise, size).astype(np.float32)


_NO_INT = np.empty(0, np.int16)


def rounded_noise(noise: np.ndarray) -> np.ndarray:
    """floor(noise + 0.5) as int16: a pool's noise rounded, for pedestals that are integers."""
    return np.floor(noise.astype(np.float64) + 0.5).astype(np.int16)


#: beam phases: the in-time pulse peaks (q + 0.5) / N_PHASES of a sample after the trigger
#: sample, q = 0 .. N_PHASES - 1 (0.2 ns steps at 80 MHz)
N_PHASES = 64


def phase_grid(sample_ns: float) -> np.ndarray:
    """The N_PHASES beam phases, ns after the trigger sample (float64)."""
    return (np.arange(N_PHASES) + 0.5) * (sample_ns / N_PHASES)


def beam_phase(t: np.ndarray, ev: np.ndarray, sample_ns: float) -> np.ndarray:
    """Index into `phase_grid` of each event's beam phase: where its particle's arrival time
    falls within a period of the free-running sampling clock (started at the spill's t = 0;
    the beam is asynchronous to it, so the phase is uniform)."""
    tt = np.asarray(t, np.float64)[ev]
    return (np.floor(tt * (N_PHASES / sample_ns)).astype(np.int64)) % N_PHASES


def waveforms(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              dep_self: np.ndarray, shape: PulseShape,
              pedestal: np.ndarray, noise: np.ndarray, offsets: np.ndarray, samples: int,
              sample_ns: float, trigger_sample: int, adc_max: int,
              table: np.ndarray | None = None, noise_int: np.ndarray | None = None
              ) -> np.ndarray:
    """Waveform-mode readout of one board: int16 (count, samples, nch), pedestal included.

    `noise` comes from `noise_pool`; offsets must leave nch x samples values in it. Sample
    s of channel c reads noise[offset + s * nch + c]. `noise_int` (`rounded_noise(noise)`,
    optional) makes the samples without pulse integer arithmetic when the pedestals are
    integers; the result is the same.
    """
    wave = np.empty((len(ev), samples, dep_self.shape[1]), np.int16)
    _waveforms(ev, t, lo, hi, dep_self, shape, pedestal, noise, offsets, sample_ns,
               trigger_sample, adc_max, table, noise_int, wave, 0.0, _NO_HITS, (0, samples))
    return wave


def waveform_hits(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  dep_self: np.ndarray, shape: PulseShape,
                  pedestal: np.ndarray, noise: np.ndarray, offsets: np.ndarray, samples: int,
                  sample_ns: float, trigger_sample: int, adc_max: int, zs_adc: float,
                  table: np.ndarray | None = None, noise_int: np.ndarray | None = None, *,
                  window: tuple[int, int]) -> dict[str, np.ndarray]:
    """Zero-suppressed waveform readout of one board: `nhit` and the WAVE_HITS arrays.

    The samples are those of `waveforms` (same arguments); a channel is a hit when its
    largest sample in the reconstruction `window` (samples [first, last),
    daq.geometry.reco_window) minus its pedestal is at least `zs_adc`.
    """
    n, nch = len(ev), dep_self.shape[1]
    hits = {"nhit": np.empty(n, np.uint8), "hit_ch": np.empty(n * nch, np.uint8),
            "hit_wave": np.empty((n * nch, samples), np.int16)}
    block = np.empty((1, samples, nch), np.int16)
    total = _waveforms(ev, t, lo, hi, dep_self, shape, pedestal, noise, offsets,
                       sample_ns, trigger_sample, adc_max, table, noise_int, block,
                       float(zs_adc), hits, window)
    return {"nhit": hits["nhit"], "hit_ch": hits["hit_ch"][:total],
            "hit_wave": hits["hit_wave"][:total]}


_NO_HITS: dict[str, np.ndarray] = {"nhit": np.empty(0, np.uint8), "hit_ch": np.empty(0, np.uint8),
            "hit_wave": np.empty((0, 1), np.int16)}


def _waveforms(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               dep_self: np.ndarray, shape: PulseShape,
               pedestal: np.ndarray, noise: np.ndarray, offsets: np.ndarray, sample_ns: float,
               trigger_sample: int, adc_max: int, table: np.ndarray | None,
               noise_int: np.ndarray | None, wave: np.ndarray, zs_adc: float,
               hits: dict[str, np.ndarray], window: tuple[int, int]) -> int:
    samples = wave.shape[1]
    ped = pedestal.astype(np.float64)
    if not (np.all(ped == np.floor(ped)) and np.all(np.abs(ped) < 2**30)):
        noise_int = None  # the integer shortcut needs integer pedestals
    elif noise_int is None:
        noise_int = rounded_noise(noise)
    phases = phase_grid(sample_ns)
    intime = shape(np.arange(samples)[None, :] * sample_ns - trigger_sample * sample_ns
                   - phases[:, None])
    return int(_waveform_kernel(
        ev, t.astype(np.float64, copy=False), lo, hi, dep_self,
        shape_table(shape) if table is None else table,
        intime, beam_phase(t, ev, sample_ns), phases, shape.tp_ns, ped,
        noise, _NO_INT if noise_int is None else noise_int, offsets, sample_ns,
        trigger_sample * sample_ns, float(adc_max), *window, zs_adc,
        wave, hits["nhit"], hits["hit_ch"], hits["hit_wave"]))


def waveforms_reference(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                        dep_self: np.ndarray, shape: PulseShape,
                        pedestal: np.ndarray, noise: np.ndarray, offsets: np.ndarray,
                        samples: int, sample_ns: float,
                        trigger_sample: int, adc_max: int) -> np.ndarray:
    """Plain NumPy version of `waveforms` with the exact pulse shape (slow; for the tests)."""
    s_ns = np.arange(samples) * sample_ns
    out = np.empty((len(ev), samples, dep_self.shape[1]), np.int16)
    phase = phase_grid(sample_ns)[beam_phase(t, ev, sample_ns)]
    for e, i in enumerate(ev):
        nch = dep_self.shape[1]
        window = noise[offsets[e]:offsets[e] + nch * samples].reshape(samples, nch).T
        buf = pedestal.astype(np.float64)[:, None] + window.astype(np.float64)
        for j in range(lo[e], hi[e]):
            a = dep_self[j].astype(np.float64)
            dt = float(t[j]) - float(t[i])
            buf += a[:, None] * shape(s_ns - trigger_sample * sample_ns - phase[e] - dt)[None, :]
        out[e] = np.clip(np.floor(buf + 0.5), 0, adc_max).T
    return out
