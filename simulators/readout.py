"""Digitisation with pileup: numba kernels turning particle deposits into board readout.

For event i and board b, the particles j with |t_j - t_i| < window_b / 2 are in the gate;
each adds its pulses at its own offset t_j - t_i. `feature` gives what a digitiser FPGA
sends (amplitude, peak time, pulse count per channel); `waveform` gives MSADC samples.
The NumPy references below are what tests hold the kernels against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numba
import numpy as np

from simulators.physics import Halo

F = TypeVar("F", bound=Callable[..., Any])

#: nogil so the front-end service can generate in a worker thread; cache so a start loads
#: machine code from disk; no fastmath so the kernels round like the NumPy reference.
_JIT: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": False, "boundscheck": False}


def _kernel(fn: F) -> F:
    return numba.njit(**_JIT)(fn)


MAX_PULSES = 64  # pulses per channel and gate the feature kernel keeps (pileup beyond: ignored)


@dataclass(frozen=True)
class PulseShape:
    """CR-RC^n pulse: f(x) = (x/tp)^n exp(n (1 - x/tp)) for x > 0, peak 1 at x = tp."""

    tp_ns: float  # time from pulse start to peak
    order: float  # n
    resolve_ns: float  # two pulses closer than this count as one

    def __call__(self, dt_from_peak: np.ndarray) -> np.ndarray:
        x = np.asarray(dt_from_peak, np.float64) / self.tp_ns + 1.0
        return np.where(x > 0, np.maximum(x, 0) ** self.order * np.exp(self.order * (1 - x)), 0.0)


FAST = PulseShape(tp_ns=5.0, order=2.0, resolve_ns=10.0)  # beam counters (plastic)
SLOW = PulseShape(tp_ns=20.0, order=2.0, resolve_ns=25.0)  # calorimeters, SRD, VETO


@numba.njit(nogil=True, cache=True, inline="always")
def _dep(i: int, j: int, c: int, dep: np.ndarray, lines: np.ndarray, hline: np.ndarray,
         hamp: np.ndarray) -> float:
    """Deposit of particle j in channel c of event i's readout (a neighbour adds its halo)."""
    a = dep[j, c]
    if j != i and lines.shape[0] > 0:
        row = hline[j]
        for q in range(lines.shape[1]):
            if lines[row, q] == c:
                a += hamp[j, q]
    return a


TABLE_STEP_NS = 0.01  # pulse-shape table step; linear interpolation error < 0.01 ADC
TABLE_SPAN = 10.0  # table covers 10 tp after the pulse start (shape < 2e-6 beyond)


def shape_table(shape: PulseShape) -> np.ndarray:
    """The pulse shape from its start to TABLE_SPAN tp, every TABLE_STEP_NS (for the kernel)."""
    x = np.arange(0.0, TABLE_SPAN * shape.tp_ns, TABLE_STEP_NS)
    return np.asarray(shape(x - shape.tp_ns), np.float64)


@numba.njit(nogil=True, cache=True, inline="always")
def _tab(dt_from_peak: float, table: np.ndarray, tp: float) -> float:
    u = (dt_from_peak + tp) / TABLE_STEP_NS
    if u < 0.0:
        return 0.0
    k = int(u)
    if k + 1 >= table.shape[0]:
        return 0.0
    w = u - k
    return table[k] * (1.0 - w) + table[k + 1] * w


@_kernel
def _overlap(amps: np.ndarray, dts: np.ndarray, k: int, table: np.ndarray, tp: float,
             resolve: float, thr: float) -> tuple[float, float, int]:
    """Several pulses in one channel: the largest peak of their sum, its time, and the pulse
    count above `thr` merging pulses closer than `resolve` (kept out of line: it is rare)."""
    best = -1.0
    tbest = 0.0
    for p in range(k):
        s = amps[p]
        for q in range(k):
            if q != p:
                s += amps[q] * _tab(dts[p] - dts[q], table, tp)
        if s > best:
            best = s
            tbest = dts[p]
    return best, tbest, _count(amps, dts, k, resolve, thr)


@_kernel
def _overlap_shared(amps: np.ndarray, dts: np.ndarray, gi: np.ndarray, k: int,
                    shape: np.ndarray, resolve: float, thr: float) -> tuple[float, float, int]:
    """`_overlap` with the shape values of the gate's particle pairs computed once per event
    (`shape[a, b]` = the table at dt_a - dt_b; `gi` the gate index of each pulse)."""
    best = -1.0
    tbest = 0.0
    for p in range(k):
        s = amps[p]
        for q in range(k):
            if q != p:
                s += amps[q] * shape[gi[p], gi[q]]
        if s > best:
            best = s
            tbest = dts[p]
    return best, tbest, _count(amps, dts, k, resolve, thr)


@_kernel
def _count(amps: np.ndarray, dts: np.ndarray, k: int, resolve: float, thr: float) -> int:
    """Pulses above `thr`, those closer than `resolve` to an earlier one counted once."""
    n = 0
    for p in range(k):
        if amps[p] <= thr:
            continue
        alone = True
        for q in range(p):
            if amps[q] > thr and abs(dts[q] - dts[p]) < resolve:
                alone = False
                break
        if alone:
            n += 1
    return n


@_kernel
def _feature_kernel(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    dep_self: np.ndarray, lines: np.ndarray, hline: np.ndarray,
                    hamp: np.ndarray, table: np.ndarray, tp: float,
                    resolve: float, noise_pool: np.ndarray, offsets: np.ndarray,
                    thr: float, amp_max: float, amp: np.ndarray, tpeak: np.ndarray,
                    npulse: np.ndarray) -> None:
    nch = dep_self.shape[1]
    amps = np.empty((nch, MAX_PULSES))
    dts = np.empty((nch, MAX_PULSES))
    gi = np.empty((nch, MAX_PULSES), np.int64)
    cnt = np.zeros(nch, np.int64)
    row = np.empty(nch, np.float32)
    pair = np.empty((MAX_PULSES, MAX_PULSES))
    for e in range(ev.shape[0]):
        i = ev[e]
        off = offsets[e]
        if hi[e] - lo[e] == 1:  # nothing else in the gate (most events): one pulse at most
            uoff = np.uint64(off)  # unsigned: no wraparound check, so the loop vectorises
            for c in range(np.uint64(nch)):
                a = dep_self[i, c]
                v = a + noise_pool[uoff + c] if a > 0.0 else noise_pool[uoff + c]
                amp[e, c] = min(v, amp_max)
                tpeak[e, c] = 0.0
                npulse[e, c] = 1 if a > thr else 0
            continue
        # pileup: each particle of the gate scatters its deposits (with its halo when it is a
        # neighbour, added as _dep adds them) into per-channel pulse lists, in gate order
        cnt[:] = 0
        for j in range(lo[e], hi[e]):
            for c in range(nch):
                row[c] = dep_self[j, c]
            if j != i and lines.shape[0] > 0:
                for q in range(lines.shape[1]):
                    row[lines[hline[j], q]] += hamp[j, q]
            dt = t[j] - t[i]
            for c in range(nch):
                if row[c] > 0.0 and cnt[c] < MAX_PULSES:
                    amps[c, cnt[c]] = row[c]
                    dts[c, cnt[c]] = dt
                    gi[c, cnt[c]] = j - lo[e]
                    cnt[c] += 1
        m = hi[e] - lo[e]
        shared = m <= MAX_PULSES  # the pair shapes, once for all channels (a shower's cells)
        if shared:
            for a in range(m):
                for b in range(m):
                    if a != b:
                        pair[a, b] = _tab((t[lo[e] + a] - t[i]) - (t[lo[e] + b] - t[i]),
                                          table, tp)
        for c in range(nch):
            noise = noise_pool[off + c]
            k = cnt[c]
            if k == 0:
                amp[e, c] = noise
                tpeak[e, c] = 0.0
                npulse[e, c] = 0
                continue
            if k == 1:  # one pulse in the gate: its amplitude is the peak
                amp[e, c] = min(amps[c, 0] + noise, amp_max)
                tpeak[e, c] = dts[c, 0]
                npulse[e, c] = 1 if amps[c, 0] > thr else 0
                continue
            if shared:
                best, tbest, n = _overlap_shared(amps[c], dts[c], gi[c], k, pair, resolve, thr)
            else:
                best, tbest, n = _overlap(amps[c], dts[c], k, table, tp, resolve, thr)
            amp[e, c] = min(best + noise, amp_max)
            tpeak[e, c] = tbest
            npulse[e, c] = min(n, 255)


@_kernel
def _waveform_kernel(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     dep_self: np.ndarray, lines: np.ndarray, hline: np.ndarray,
                     hamp: np.ndarray, table: np.ndarray, intime: np.ndarray, tp: float,
                     pedestal: np.ndarray, noise: np.ndarray, noise_int: np.ndarray,
                     offsets: np.ndarray, sample_ns: float, trig_ns: float, adc_max: float,
                     wave: np.ndarray) -> None:
    # wave is (count, samples, nch): one event of the board is one contiguous block, and so
    # is its noise window. With integer pedestals (noise_int non-empty) a sample without
    # pulse is pedestal + round(noise), exactly floor(ped + noise + 0.5), in int32 over the
    # whole block; only the samples a pulse reaches are computed in float64.
    n = ev.shape[0]
    ns, nch = wave.shape[1], wave.shape[2]
    flat = wave.reshape(n * ns * nch)
    size = np.uint64(ns * nch)
    int_ped = noise_int.shape[0] > 0
    pedt = np.empty(ns * nch, np.int32)
    pedf = np.empty(ns * nch)  # the pedestal of each sample of the block
    for q in range(ns * nch):
        pedf[q] = pedestal[q % nch]
        pedt[q] = np.int32(pedestal[q % nch]) if int_ped else 0
    amax = np.int32(adc_max)
    buf = np.empty(ns)
    a = np.empty(nch)
    dg = np.empty((MAX_PULSES, nch), np.float32)
    sh = np.empty((MAX_PULSES, ns))
    for e in range(n):
        i = ev[e]
        off = np.uint64(offsets[e])  # unsigned: no wraparound check, the loops vectorise
        base = np.uint64(e) * size
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
                            p = intime[s]
                            if p != 0.0:  # before the pulse starts: the quiet value
                                k = off + np.uint64(s * nch + c)
                                v2 = np.floor(pedestal[c] + noise[k] + d * p + 0.5)
                                wave[e, s, c] = min(max(v2, 0.0), adc_max)
                continue
        elif single:
            for s in range(ns):
                row = off + np.uint64(s * nch)
                p = intime[s]
                for c in range(np.uint64(nch)):
                    v2 = np.floor(pedestal[c] + noise[row + c] + a[c] * p + 0.5)
                    wave[e, s, c] = min(max(v2, 0.0), adc_max)
            continue
        else:  # pileup, before its channels are redone: one pass over the block
            for q in range(size):
                v2 = np.floor(pedf[q] + noise[off + q] + 0.5)
                flat[base + q] = min(max(v2, 0.0), adc_max)
        m = hi[e] - lo[e]
        if m <= MAX_PULSES:  # pileup: each particle's pulse shape once, for all channels
            _gate_pulses(i, lo[e], hi[e], t, dep_self, lines, hline, hamp, table, tp,
                         sample_ns, trig_ns, dg, sh)
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
                    wave[e, s, c] = min(max(v2, 0.0), adc_max)
            continue
        for c in range(nch):  # a very crowded gate: channel by channel
            if not _quiet(i, c, lo[e], hi[e], dep_self, lines, hline, hamp):
                _signal_channel(i, c, lo[e], hi[e], t, dep_self, lines, hline, hamp, table,
                                tp, pedestal[c], noise, offsets[e] + c, nch, sample_ns,
                                trig_ns, adc_max, buf, wave[e, :, c])


@_kernel
def _gate_pulses(i: int, lo: int, hi: int, t: np.ndarray, dep_self: np.ndarray,
                 lines: np.ndarray, hline: np.ndarray, hamp: np.ndarray, table: np.ndarray,
                 tp: float, sample_ns: float, trig_ns: float, dg: np.ndarray,
                 sh: np.ndarray) -> None:
    """For each particle jl of the gate: its deposit per channel dg[jl] (as `_dep` adds it)
    and its pulse at every sample sh[jl] (what `_signal_channel` adds per unit deposit)."""
    ns = sh.shape[1]
    nch = dep_self.shape[1]
    ntab = table.shape[0]
    for jl in range(hi - lo):
        j = lo + jl
        for c in range(nch):
            dg[jl, c] = dep_self[j, c]
        if j != i and lines.shape[0] > 0:
            for q in range(lines.shape[1]):
                dg[jl, lines[hline[j], q]] += hamp[j, q]
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


@_kernel
def _quiet(i: int, c: int, lo: int, hi: int, dep_self: np.ndarray, lines: np.ndarray,
           hline: np.ndarray, hamp: np.ndarray) -> bool:
    for j in range(lo, hi):  # noqa: SIM110 (numba compiles loops, not generator expressions)
        if _dep(i, j, c, dep_self, lines, hline, hamp) > 0.0:
            return False
    return True


@_kernel
def _signal_channel(i: int, c: int, lo: int, hi: int, t: np.ndarray, dep_self: np.ndarray,
                    lines: np.ndarray, hline: np.ndarray, hamp: np.ndarray, table: np.ndarray,
                    tp: float, ped: float, noise: np.ndarray, base: int, stride: int,
                    sample_ns: float, trig_ns: float, adc_max: float, buf: np.ndarray,
                    out: np.ndarray) -> None:
    """Samples of one channel that has pulses (kept out of line so the quiet loop stays tight).

    Sample s of the channel reads noise[base + s * stride].
    """
    ns = out.shape[0]
    ntab = table.shape[0]
    for s in range(ns):
        buf[s] = ped + noise[base + s * stride]
    for j in range(lo, hi):
        a = _dep(i, j, c, dep_self, lines, hline, hamp)
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


@_kernel
def _gates_kernel(t: np.ndarray, ev: np.ndarray, half: float, lo: np.ndarray,
                  hi: np.ndarray) -> None:
    # one sweep of two pointers over the sorted times (ev ascending): what searchsorted
    # finds by bisection, without its cache misses
    a = 0
    b = 0
    n = t.shape[0]
    for e in range(ev.shape[0]):
        x = t[ev[e]]
        left = x - half
        right = x + half
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
    lo = np.empty(len(ev), np.int64)
    hi = np.empty(len(ev), np.int64)
    _gates_kernel(t, ev.astype(np.int64, copy=False), window_ns / 2, lo, hi)
    return lo, hi


def gates_reference(t: np.ndarray, ev: np.ndarray, window_ns: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """NumPy version of `gates` (binary search; any order of `ev`)."""
    half = window_ns / 2
    lo = np.searchsorted(t, t[ev] - half, side="right")
    hi = np.searchsorted(t, t[ev] + half, side="left")
    return lo.astype(np.int64), hi.astype(np.int64)


def _halo_args(halo: Halo | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if halo is None:
        return np.empty((0, 1), np.int64), np.empty(0, np.int64), np.empty((0, 1), np.float32)
    return halo.lines, halo.line, halo.amp


def features(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             dep_self: np.ndarray, halo: Halo | None, shape: PulseShape,
             noise_pool: np.ndarray, offsets: np.ndarray, threshold: float, amp_max: float,
             table: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Feature-mode readout of one board: `amp`, `tpeak`, `npulse` (count, nch)."""
    n, nch = len(ev), dep_self.shape[1]
    out: dict[str, np.ndarray] = {
        "amp": np.empty((n, nch), np.float32), "tpeak": np.empty((n, nch), np.float32),
        "npulse": np.empty((n, nch), np.uint8)}
    _feature_kernel(ev, t.astype(np.float64, copy=False), lo, hi, dep_self, *_halo_args(halo),
                    shape_table(shape) if table is None else table, shape.tp_ns,
                    shape.resolve_ns, noise_pool, offsets,
                    threshold, amp_max, out["amp"], out["tpeak"], out["npulse"])
    return out


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


def waveforms(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              dep_self: np.ndarray, halo: Halo | None, shape: PulseShape,
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
    ped = pedestal.astype(np.float64)
    if not (np.all(ped == np.floor(ped)) and np.all(np.abs(ped) < 2**30)):
        noise_int = None  # the integer shortcut needs integer pedestals
    elif noise_int is None:
        noise_int = rounded_noise(noise)
    _waveform_kernel(ev, t.astype(np.float64, copy=False), lo, hi, dep_self, *_halo_args(halo),
                     shape_table(shape) if table is None else table,
                     shape(np.arange(samples) * sample_ns - trigger_sample * sample_ns),
                     shape.tp_ns, ped, noise,
                     _NO_INT if noise_int is None else noise_int, offsets, sample_ns,
                     trigger_sample * sample_ns, float(adc_max), wave)
    return wave


def waveforms_reference(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                        dep_self: np.ndarray, halo: Halo | None, shape: PulseShape,
                        pedestal: np.ndarray, noise: np.ndarray, offsets: np.ndarray,
                        samples: int, sample_ns: float,
                        trigger_sample: int, adc_max: int) -> np.ndarray:
    """Plain NumPy version of `waveforms` with the exact pulse shape (slow; for the tests)."""
    s_ns = np.arange(samples) * sample_ns
    out = np.empty((len(ev), samples, dep_self.shape[1]), np.int16)
    for e, i in enumerate(ev):
        nch = dep_self.shape[1]
        window = noise[offsets[e]:offsets[e] + nch * samples].reshape(samples, nch).T
        buf = pedestal.astype(np.float64)[:, None] + window.astype(np.float64)
        for j in range(lo[e], hi[e]):
            a = dep_self[j].astype(np.float64)
            if j != i and halo is not None:
                a[halo.lines[halo.line[j]]] += halo.amp[j]
            dt = float(t[j]) - float(t[i])
            buf += a[:, None] * shape(s_ns - trigger_sample * sample_ns - dt)[None, :]
        out[e] = np.clip(np.floor(buf + 0.5), 0, adc_max).T
    return out
