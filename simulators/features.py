"""Feature-mode readout, zero-suppressed as a digitiser FPGA sends it (docs/dataflow.md).

Per event and channel the board finds the amplitude (the largest peak, in the board's
reconstruction window, of the pulses of the particles in its gate - those whose pulses reach
the window - plus noise), its time and the pulse count, exactly as before suppression; it
sends the channels whose amplitude rounded to ADC counts reaches zs_adc. Many events are
alone in their gate and most of their channels read only noise, so the kernel looks at the
channels that can reach zs_adc: those where a particle deposits, and those whose noise
alone does (a bitmap over the noise pool). `features_dense` keeps every channel unrounded
and the tests hold `features` to it.
"""

from __future__ import annotations

import numpy as np

from daq.geometry import peak_correction
from daq.hits import FEATURE_HITS, T_UNIT_NS
from simulators.jit import inline, kernel, prefetch, trailing_zeros
from simulators.readout import (
    MAX_PULSES,
    TABLE_STEP_NS,
    PulseShape,
    Sampling,
    beam_phase,
    phase_grid,
    shape_at,
    shape_table,
)

ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
AHEAD = 8  # events ahead whose noise window is prefetched (its lines are spread over 4 MB)


def lowest_kept(zs_adc: float) -> np.float32:
    """The least float32 amplitude a with floor(a + 0.5) >= zs_adc: ceil(zs_adc) - 0.5.

    A half-integer of at most 4096.5, so float32 holds it exactly and the comparison
    `a >= lowest_kept(zs)` is exactly `floor(a + 0.5) >= zs`.
    """
    return np.float32(np.ceil(zs_adc) - 0.5)


def loud_bits(noise: np.ndarray, zs_adc: float) -> np.ndarray:
    """Bit p (of word p // 64, from the low bit) set where noise[p] alone reaches zs_adc."""
    bits = np.packbits(noise >= lowest_kept(zs_adc), bitorder="little")
    return np.concatenate([bits, np.zeros((-len(bits)) % 8, np.uint8)]).view(np.uint64)


def features(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             dep_self: np.ndarray, shape: PulseShape,
             noise_pool: np.ndarray, offsets: np.ndarray, threshold: float, amp_max: float,
             zs_adc: float, table: np.ndarray | None = None, loud: np.ndarray | None = None,
             deposits: tuple[np.ndarray, np.ndarray] | None = None, *,
             sampling: Sampling) -> dict[str, np.ndarray]:
    """Zero-suppressed feature readout of one board: `nhit` and the FEATURE_HITS arrays.

    A channel is a hit when its amplitude rounded to ADC counts, floor(amp + 0.5), is at
    least `zs_adc`: `hit_amp` is that rounded amplitude, `hit_t` the time of the window's
    largest sample from the in-time peak in units of T_UNIT_NS (rounded half to even; 0
    without a pulse; `_lone_times`), `hit_np` the pulse count. Offsets must leave nch
    values in the pool. Computed here when not given, at the cost of a pass over the pool
    or the deposits: `loud`, which must be `loud_bits(noise_pool, zs_adc)`, and `deposits`,
    (`touched`, `reach`) as `calibrate.to_adc` notes them: uint8 per particle (row of
    `dep_self`), set when it deposits in some channel, and uint8 per channel, set when
    some particle may (a superset will do).
    """
    if loud is None:
        loud = loud_bits(noise_pool, zs_adc)
    if deposits is None:
        deposits = (np.asarray((dep_self > 0).any(axis=1), np.uint8),
                    np.asarray((dep_self > 0).any(axis=0), np.uint8))
    touched, reach = deposits
    hits, _ = _features(ev, t, lo, hi, dep_self, shape, noise_pool, offsets, threshold,
                        amp_max, zs_adc, table, loud, touched, reach, sampling, dense=False)
    return hits


def features_dense(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   dep_self: np.ndarray, shape: PulseShape,
                   noise_pool: np.ndarray, offsets: np.ndarray, threshold: float,
                   amp_max: float, table: np.ndarray | None = None, *,
                   sampling: Sampling) -> dict[str, np.ndarray]:
    """Every channel's features before suppression and rounding, (count, nch): `amp` and
    `tpeak` (ns) float32, `npulse` uint8. What `features` reduces to its hits."""
    no_hit = np.zeros(len(noise_pool) // 64 + 1, np.uint64)  # zs = inf: no channel is a hit
    _, dense = _features(ev, t, lo, hi, dep_self, shape, noise_pool, offsets, threshold,
                         amp_max, np.inf, table, no_hit, np.zeros(len(dep_self), np.uint8),
                         np.zeros(dep_self.shape[1], np.uint8), sampling, dense=True)
    return dense


def _features(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              dep_self: np.ndarray, shape: PulseShape,
              noise_pool: np.ndarray, offsets: np.ndarray, threshold: float, amp_max: float,
              zs_adc: float, table: np.ndarray | None, loud: np.ndarray, touched: np.ndarray,
              reach: np.ndarray, sampling: Sampling, *, dense: bool
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    n, nch = len(ev), dep_self.shape[1]
    buf = {name: np.empty(n * nch, dt) for name, dt in FEATURE_HITS.items()}
    nhit = np.empty(n, np.uint8)
    rows = n if dense else 0
    tab = shape_table(shape) if table is None else table
    grid = phase_grid(sampling.sample_ns)
    at = beam_phase(t, ev, sampling.sample_ns)
    out: dict[str, np.ndarray] = {
        "amp": np.empty((rows, nch), np.float32), "tpeak": np.empty((rows, nch), np.float32),
        "npulse": np.empty((rows, nch), np.uint8)}
    total = _feature_kernel(
        ev, t.astype(np.float64, copy=False), lo, hi, dep_self, tab, shape.tp_ns,
        float(sampling.sample_ns), int(sampling.trigger_sample), int(sampling.samples),
        *sampling.span, grid[at], _lone_times(grid, tab, shape.tp_ns, sampling)[at],
        peak_correction(shape.tp_ns, sampling.sample_ns), noise_pool, loud, touched,
        np.flatnonzero(reach).astype(np.int64), offsets, threshold,
        amp_max, lowest_kept(zs_adc), nhit,
        buf["hit_ch"], buf["hit_amp"], buf["hit_t"], buf["hit_np"],
        out["amp"], out["tpeak"], out["npulse"])
    # views of the first `total` hits: the buffers they keep alive are smaller than the
    # dense (count, nch) arrays of the unsuppressed readout
    return {"nhit": nhit, **{name: a[:total] for name, a in buf.items()}}, out


def _lone_times(grid: np.ndarray, table: np.ndarray, tp: float, sampling: Sampling
                ) -> np.ndarray:
    """Per beam phase of `grid`: the time, from the in-time peak, of the largest window
    sample of an in-time pulse alone on its channel; what the kernel reports as its hit_t.

    hit_t is the time of the window's largest sample (docs/dataflow.md), as an event with
    pileup takes it from its summed trace, and as the waveform trigger's peak time is, there
    from the trigger sample: the two differ by the beam phase only. The peak itself
    (time 0) is not it: the samples fall off it by the phase, as the amplitude's do before
    the peak correction.
    """
    out = np.empty(len(grid))
    _lone_times_kernel(grid, table, tp, float(sampling.sample_ns),
                       int(sampling.trigger_sample), *sampling.span, out)
    return out


@kernel
def _lone_times_kernel(grid: np.ndarray, table: np.ndarray, tp: float, sample_ns: float,
                       trig: int, w0: int, w1: int, out: np.ndarray) -> None:
    # the samples and the choice of the pileup path (_feature_kernel, _scan): the first of
    # equal largest samples
    for g in range(grid.shape[0]):
        t0 = -trig * sample_ns - grid[g]
        best = shape_at(t0 + w0 * sample_ns, table, tp)
        mbest = w0
        for m in range(w0 + 1, w1):
            v = shape_at(t0 + m * sample_ns, table, tp)
            if v > best:
                best = v
                mbest = m
        out[g] = t0 + mbest * sample_ns


@kernel
def _feature_kernel(ev: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    dep_self: np.ndarray, table: np.ndarray, tp: float, sample_ns: float,
                    trig: int, nsamp: int, w0: int, w1: int, phase: np.ndarray,
                    lone_t: np.ndarray, corr: np.ndarray,
                    noise_pool: np.ndarray,
                    loud: np.ndarray,
                    touched: np.ndarray,
                    support: np.ndarray, offsets: np.ndarray, thr: float,
                    amp_max: float, lowest: np.float32, nhit: np.ndarray, hit_ch: np.ndarray,
                    hit_amp: np.ndarray, hit_t: np.ndarray, hit_np: np.ndarray,
                    amp: np.ndarray, tpeak: np.ndarray, npulse: np.ndarray) -> int:
    # Hits go to hit_* from k on (the buffers hold every channel of every event). A lone
    # event looks at its candidates only; an event with pileup computes every channel into
    # rows, then keeps its hits from them. With `amp` of count rows (the dense reference)
    # every event takes the rows and they are copied out.
    n, nch = ev.shape[0], dep_self.shape[1]
    dense = amp.shape[0] > 0
    nsup = support.shape[0]
    cand = np.empty(2 * nch, np.int64)
    a_row = np.empty(nch, np.float32)
    t_row = np.empty(nch, np.float32)
    n_row = np.empty(nch, np.uint8)
    amps = np.empty((nch, MAX_PULSES))  # pileup: the pulses of each channel, their times
    dts = np.empty((nch, MAX_PULSES))
    gi = np.empty((nch, MAX_PULSES), np.int64)  # and gate indices
    cnt = np.zeros(nch, np.int64)
    samp = np.empty((MAX_PULSES, nsamp))  # pileup: each gate particle's pulse at the samples
    trace = np.empty(nsamp)
    k = 0
    for e in range(n):
        if e + AHEAD < n:  # the noise windows are spread over the whole pool
            ahead = np.uint64(offsets[e + AHEAD])
            for q in range(np.uint64(0), np.uint64(nch), np.uint64(16)):  # 16 float32: a line
                prefetch(noise_pool, ahead + q)
            prefetch(noise_pool, ahead + np.uint64(nch - 1))
        i = ev[e]
        off = offsets[e]
        k0 = k
        # (everything per event is written out here: a call with array arguments costs
        # more than the work of most events)
        if hi[e] - lo[e] == 1 and not dense:
            # Alone in its gate: one pulse at most, at the in-time peak. The candidates are
            # the support, when the particle deposits anywhere, and the loud channels: any
            # other channel reads noise below zs. Most events have no loud channel.
            ns = nsup if touched[i] else 0
            first, last = off >> 6, (off + nch - 1) >> 6  # the window's loud bits
            low = ALL << np.uint64(off & 63)
            high = ALL >> np.uint64(63 - ((off + nch - 1) & 63))
            if first == last:
                word = loud[first] & low & high
            else:
                word = (loud[first] & low) | (loud[last] & high)
                for w in range(first + 1, last):
                    word |= loud[w]
            m = ns if word == 0 else _candidates(loud, off, nch, support, ns, cand)
            tq = _round_t(np.float32(lone_t[e]))
            for p in range(m):  # each written, and kept without a branch
                c = support[p] if word == 0 else cand[p]
                a = dep_self[i, c]
                v = a + noise_pool[off + c] if a > 0.0 else noise_pool[off + c]
                x = np.float32(min(v, amp_max))
                hit_ch[k] = c
                hit_amp[k] = _round_amp(x)
                hit_t[k] = tq if a > 0.0 else 0  # a pulse, or noise alone
                hit_np[k] = 1 if a > thr else 0
                k += int(x >= lowest)
            nhit[e] = k - k0
            continue
        if hi[e] - lo[e] == 1:  # alone, every channel (the dense reference)
            uoff = np.uint64(off)  # unsigned: no wraparound check, so the loop vectorises
            for c in range(np.uint64(nch)):
                a = dep_self[i, c]
                v = a + noise_pool[uoff + c] if a > 0.0 else noise_pool[uoff + c]
                a_row[c] = min(v, amp_max)
                t_row[c] = lone_t[e] if a > 0.0 else 0.0
                n_row[c] = 1 if a > thr else 0
        else:
            # pileup: each particle of the gate scatters its deposits into per-channel
            # pulse lists
            cnt[:] = 0
            for j in range(lo[e], hi[e]):
                dt = t[j] - t[i]
                for c in range(nch):
                    d = dep_self[j, c]
                    if d > 0.0 and cnt[c] < MAX_PULSES:
                        amps[c, cnt[c]] = d
                        dts[c, cnt[c]] = dt
                        gi[c, cnt[c]] = j - lo[e]
                        cnt[c] += 1
            # the first sample's time from the in-time peak, which falls phase[e] after the
            # trigger sample (the beam is asynchronous to the clock)
            t0 = -trig * sample_ns - phase[e]
            mg = hi[e] - lo[e]
            # the samples some pulse of the gate reaches (the gate's times are sorted; a
            # pulse is 0.0 before its start and beyond the table): elsewhere the trace is 0
            span = table.shape[0] * TABLE_STEP_NS
            m0 = max(0, int(np.floor((t[lo[e]] - t[i] - tp - t0) / sample_ns)))
            m1 = min(nsamp, int(np.floor((t[hi[e] - 1] - t[i] - tp + span - t0)
                                         / sample_ns)) + 2)
            if m1 <= m0:
                m0, m1 = 0, nsamp
            # only the window and a sample on each side of it are read (_scan, _peak)
            m0 = max(m0, w0 - 1)
            m1 = min(m1, w1 + 1)
            shared = mg <= MAX_PULSES  # the sampled pulses, once for all channels
            if shared:
                for g in range(mg):
                    dg = t[lo[e] + g] - t[i]
                    for m in range(m0, m1):
                        samp[g, m] = shape_at(t0 + m * sample_ns - dg, table, tp)
            for c in range(nch):
                noise = noise_pool[off + c]
                kc = cnt[c]
                if kc == 0:
                    a_row[c] = noise
                    t_row[c] = 0.0
                    n_row[c] = 0
                elif kc == 1 and dts[c, 0] == 0.0:  # the in-time pulse alone: as a lone one
                    a_row[c] = min(amps[c, 0] + noise, amp_max)
                    t_row[c] = lone_t[e]
                    n_row[c] = 1 if amps[c, 0] > thr else 0
                else:
                    for m in range(max(0, m0 - 1), min(nsamp, m1 + 1)):
                        trace[m] = 0.0  # the window and a zero on each side of it
                    for p in range(kc):
                        for m in range(m0, m1):
                            trace[m] += amps[c, p] * (
                                samp[gi[c, p], m] if shared
                                else shape_at(t0 + m * sample_ns - dts[c, p], table, tp))
                    # amplitude, time and pulses from the reconstruction window's samples
                    # (w0 .. w1 - 1), as the trigger takes them from a waveform
                    s0, s1 = max(m0, w0), min(m1, w1)
                    if s1 <= s0:  # no pulse reaches the window
                        a_row[c] = noise
                        t_row[c] = 0.0
                        n_row[c] = 0
                        continue
                    _, mbest, np_ = _scan(trace, s0, s1, nsamp, thr)
                    a_row[c] = min(_peak(trace, mbest, nsamp, thr, corr) + noise, amp_max)
                    t_row[c] = t0 + mbest * sample_ns
                    n_row[c] = min(np_, 255)
        if dense:
            amp[e] = a_row
            tpeak[e] = t_row
            npulse[e] = n_row
        for c in range(nch):  # the hits of the rows
            if a_row[c] >= lowest:
                hit_ch[k] = c
                hit_amp[k] = _round_amp(a_row[c])
                hit_t[k] = _round_t(t_row[c])
                hit_np[k] = n_row[c]
                k += 1
        nhit[e] = k - k0
    return k


@kernel
def _candidates(loud: np.ndarray, off: int, nch: int, support: np.ndarray, ns: int,
                out: np.ndarray) -> int:
    """support[:ns] and the channels c whose noise noise_pool[off + c] reaches zs, merged
    in ascending order into out[:m] (out holds 2 nch: the loud ones go first to its second
    half); m."""
    nl = nch
    end = off + nch
    w = off >> 6
    while w << 6 < end:
        base = w << 6
        word = loud[w]
        if off > base:
            word &= ALL << np.uint64(off - base)
        if end - base < 64:
            word &= (np.uint64(1) << np.uint64(end - base)) - np.uint64(1)
        while word != 0:
            out[nl] = base + trailing_zeros(word) - off
            nl += 1
            word &= word - np.uint64(1)
        w += 1
    m = p = 0
    q = nch
    while p < ns or q < nl:
        if q >= nl or (p < ns and support[p] <= out[q]):
            if q < nl and out[q] == support[p]:
                q += 1
            out[m] = support[p]
            p += 1
        else:
            out[m] = out[q]
            q += 1
        m += 1
    return m


@inline
def _round_amp(x: float | np.float32) -> np.int16:
    return np.int16(min(max(np.floor(np.float64(x) + 0.5), -32768.0), 32767.0))


@inline
def _round_t(t_ns: float | np.float32) -> np.int16:
    if t_ns == 0.0:  # a channel without a pulse: no division
        return np.int16(0)
    return np.int16(min(max(np.rint(np.float64(t_ns) / T_UNIT_NS), -32768.0), 32767.0))


@kernel
def _peak(trace: np.ndarray, m: int, ns: int, thr: float, corr: np.ndarray) -> float:
    """The trace's largest sample trace[m] corrected to the pulse peak as the trigger does
    (`trigger.kernels._peak`, `daq.geometry.peak_correction`), from `thr` on."""
    y0 = trace[m]
    if m == 0 or m == ns - 1 or y0 <= thr:
        return y0
    last = corr.shape[0] - 1
    u = min(max((trace[m + 1] - trace[m - 1]) / y0 + 1.0, 0.0), 2.0) * (last / 2.0)
    k = min(int(u), last - 1)
    w = u - k
    return y0 * (corr[k] * (1.0 - w) + corr[k + 1] * w)


@kernel
def _scan(trace: np.ndarray, m0: int, m1: int, ns: int, thr: float
          ) -> tuple[float, int, int]:
    """The sampled trace's largest sample, its index, and its pulses: samples above `thr`
    strictly higher than the sample before and not lower than the one after (the trigger's
    pulse definition, `trigger.kernels.PEAK_HALF_WIDTH` = 1), so both readout modes resolve
    two pulses alike (decision 0003, "Double-pulse resolution"). The samples m0 .. m1 - 1
    are scanned (the reconstruction window where some pulse reaches it); trace[m0 - 1] and
    trace[m1] must hold their values (or 0) where they exist."""
    best = trace[m0]
    mbest = m0
    n = 0
    for m in range(m0, m1):
        v = trace[m]
        if v > best:
            best = v
            mbest = m
        before = trace[m - 1] if m > 0 else -np.inf
        after = trace[m + 1] if m + 1 < ns else -np.inf
        n += (v > thr) & (v > before) & (v >= after)
    return best, mbest, n
