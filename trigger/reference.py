"""NumPy reference of the trigger kernels: same signatures and arithmetic as trigger.kernels.

Vectorised over events and channels; used by the tests (which require the compiled kernels
to agree with it exactly) and by the benchmark as the baseline.
"""

from __future__ import annotations

import numpy as np

from daq import hits
from trigger.kernels import (
    F_CAL_MAX,
    F_CAL_MIN,
    F_ECAL_MAX,
    F_PS_MIN,
    F_S_MIN,
    F_V1_MAX,
    GAP_MAX,
    I_ENABLED,
    I_PRE_BEAM,
    I_PRE_CAL,
    I_PRE_RANDOM,
    PEAK_HALF_WIDTH,
)

_MASK64 = (1 << 64) - 1


def mix_int(x: int) -> int:
    """splitmix64 finaliser on a Python int (the kernels' `_mix`)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wraps modulo 2**64 like the kernel)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _pulses(wave: np.ndarray, ped: np.ndarray, thr: float, w0: int, w1: int) -> np.ndarray:
    # the pulses of the whole trace whose sample lies in the window w0 .. w1 - 1
    ns = wave.shape[2]
    above = wave >= np.ceil(ped + thr)[:, :, None]
    peak = above.copy()
    for k in range(1, PEAK_HALF_WIDTH + 1):
        if k >= ns:
            break
        # earlier neighbours must be strictly lower, later ones not higher
        peak[:, :, k:] &= wave[:, :, k:] > wave[:, :, :-k]
        peak[:, :, :-k] &= wave[:, :, :-k] >= wave[:, :, k:]
    return np.minimum(peak[:, :, w0:w1].sum(axis=2), 255)


def wave_board(wave: np.ndarray, live: np.ndarray, ped: np.ndarray, w0: int, w1: int,
               pulse_thr: float, adc_max: int, trig: int, sample_ns: float, extra: bool,
               pulses: bool, amp: np.ndarray, tpeak: np.ndarray, npulse: np.ndarray,
               integral: np.ndarray, sat: np.ndarray) -> None:
    # wave is (count, samples, nch) on the wire; the arithmetic below is per (event, channel)
    w = wave.astype(np.int64).transpose(0, 2, 1)
    win = w[:, :, w0:w1]
    p = ped.astype(np.float64)[None, :]
    mx = win.max(axis=2)
    a = mx - p
    amp[:] = a
    if extra:
        # peak time only where there is a pulse; 0 for quiet channels
        tpeak[:] = np.where(a >= pulse_thr, (np.argmax(win, axis=2) + w0 - trig) * sample_ns,
                            0.0)
        integral[:] = win.sum(axis=2) - p * (w1 - w0)
    sat[:] = ((mx >= adc_max) & (live[None, :] != 0)).any(axis=1)
    npulse[:] = _pulses(w, np.broadcast_to(p, mx.shape), pulse_thr, w0, w1) if pulses else 0


def _peaks(w: np.ndarray, ped: np.ndarray, w0: int, w1: int, pulse_thr: float,
           corr: np.ndarray, amp: np.ndarray) -> np.ndarray:
    # w (traces, samples) int64, ped (traces,) their pedestals; the kernels' _peak on every
    # trace whose amplitude and largest sample of the window minus pedestal reach pulse_thr
    # (in float64, in the kernels' order of operations)
    ns = w.shape[1]
    imx = np.argmax(w[:, w0:w1], axis=1) + w0
    rows = np.arange(len(w))
    y0 = w[rows, imx] - ped
    inner = (imx > 0) & (imx < ns - 1)
    ym = w[rows, np.maximum(imx - 1, 0)] - ped
    yp = w[rows, np.minimum(imx + 1, ns - 1)] - ped
    last = len(corr) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.minimum(np.maximum((yp - ym) / y0 + 1.0, 0.0), 2.0) * (last / 2.0)
    u = np.where(inner & (y0 >= pulse_thr) & np.isfinite(u), u, 0.0)
    k = np.minimum(u.astype(np.int64), last - 1)
    wgt = u - k
    a = y0 * (corr[k] * (1.0 - wgt) + corr[k + 1] * wgt)
    use = (amp.astype(np.float64) >= pulse_thr) & inner & (y0 >= pulse_thr) & (a > 0.0)
    return np.where(use, a, amp)


def peak_board(wave: np.ndarray, ped: np.ndarray, w0: int, w1: int, pulse_thr: float,
               corr: np.ndarray, amp: np.ndarray) -> None:
    n, ns, nch = wave.shape
    w = wave.astype(np.int64).transpose(0, 2, 1).reshape(n * nch, ns)
    p = np.tile(ped.astype(np.float64), n)
    amp[:] = _peaks(w, p, w0, w1, pulse_thr, corr, amp.reshape(-1)).reshape(n, nch)


def peak_hits(ch: np.ndarray, wave: np.ndarray, ped: np.ndarray, w0: int, w1: int,
              pulse_thr: float, corr: np.ndarray, amp: np.ndarray) -> None:
    amp[:] = _peaks(wave.astype(np.int64), ped.astype(np.float64)[ch], w0, w1, pulse_thr,
                    corr, amp)


def _event_of_hit(nhit: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(nhit)), nhit)


def _any_per_event(nhit: np.ndarray, flag: np.ndarray) -> np.ndarray:
    return np.bincount(_event_of_hit(nhit)[flag], minlength=len(nhit)) > 0


def wave_hits(nhit: np.ndarray, ch: np.ndarray, wave: np.ndarray, live: np.ndarray,
              ped: np.ndarray, w0: int, w1: int, pulse_thr: float, adc_max: int, pulses: bool,
              amp: np.ndarray, npulse: np.ndarray, sat: np.ndarray) -> None:
    # wave is (nhits, samples): wave_board's arithmetic with hits in place of channels
    w = wave.astype(np.int64)
    p = ped.astype(np.float64)[ch]
    mx = w[:, w0:w1].max(axis=1, initial=np.iinfo(np.int64).min)
    amp[:] = mx - p
    sat[:] = _any_per_event(nhit, (mx >= adc_max) & (live[ch] != 0))
    if pulses:
        npulse[:] = _pulses(w[None], p[None], pulse_thr, w0, w1)[0]


def hit_order(nhit: np.ndarray, ch: np.ndarray) -> int:
    c = ch.astype(np.int64)
    first = np.zeros(len(c), bool)
    first[hits.offsets(nhit)[:-1][nhit > 0]] = True  # an event's first hit has no previous
    bad = np.flatnonzero(~first[1:] & (c[1:] <= c[:-1])) + 1
    return int(bad[0]) if len(bad) else -1


def feature_hits(nhit: np.ndarray, ch: np.ndarray, amp: np.ndarray, limit: np.ndarray,
                 weight: np.ndarray, group: np.ndarray, zthr: float, sat: np.ndarray,
                 out: np.ndarray) -> int:
    bad = hit_order(nhit, ch)
    if bad < 0:
        sat[:] = _any_per_event(nhit, amp.astype(np.float64) >= limit[ch])
        accumulate_hits(nhit, ch, amp, weight, group, zthr, out)
    return bad


def accumulate(amp: np.ndarray, weight: np.ndarray, group: np.ndarray, zthr: float,
               out: np.ndarray) -> None:
    a = amp.astype(np.float64)
    term = np.where(a >= zthr, a * weight[None, :], 0.0)
    for c in range(amp.shape[1]):  # channel order, as the kernel adds
        if group[c] >= 0:
            out[:, group[c]] += term[:, c]


def accumulate_hits(nhit: np.ndarray, ch: np.ndarray, amp: np.ndarray, weight: np.ndarray,
                    group: np.ndarray, zthr: float, out: np.ndarray) -> None:
    a = amp.astype(np.float64)
    g = group[ch]
    use = (g >= 0) & (a >= zthr)
    # ufunc.at adds repeated indices one after the other, in hit order, as the kernel does
    np.add.at(out, (_event_of_hit(nhit)[use], g[use]), a[use] * weight[ch[use]])


def feature_columns(sums: np.ndarray, e_ecal: np.ndarray, e_ps: np.ndarray,
                    e_hcal: np.ndarray, e_veto: np.ndarray, e_srd: np.ndarray) -> None:
    e_ecal[:] = sums[:, 0] + sums[:, 1]
    e_ps[:] = sums[:, 0]
    e_hcal[:] = sums[:, 2:6]
    e_veto[:] = sums[:, 6]
    e_srd[:] = sums[:, 7]


def neighbour_gaps(ts: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> None:
    g = np.clip(np.diff(ts.astype(np.int64)), 0, GAP_MAX).astype(np.uint16)
    prev[:1] = nxt[-1:] = 0
    prev[1:] = nxt[:-1] = g


def beam_dense(amp: np.ndarray, npulse: np.ndarray, zthr: float, amp_out: np.ndarray,
               np_out: np.ndarray) -> None:
    keep = amp.astype(np.float64) >= zthr
    amp_out[:] = np.where(keep, amp, np.float32(0.0))
    np_out[:] = np.where(keep, npulse, np.uint8(0))


def beam_dense_hits(nhit: np.ndarray, ch: np.ndarray, amp: np.ndarray, npulse: np.ndarray,
                    zthr: float, amp_out: np.ndarray, np_out: np.ndarray) -> None:
    keep = amp.astype(np.float64) >= zthr
    ev = _event_of_hit(nhit)[keep]
    amp_out[:] = 0.0
    np_out[:] = 0
    amp_out[ev, ch[keep]] = amp[keep]
    np_out[ev, ch[keep]] = npulse[keep]


def multiplicity(amp: np.ndarray, npulse: np.ndarray, weight: np.ndarray, s_idx: np.ndarray,
                 out: np.ndarray) -> None:
    if s_idx.shape[0] == 0:
        out[:] = 1
        return
    k = np.floor(amp[:, s_idx].astype(np.float64) * weight[s_idx] + 0.5).astype(np.int64)
    p = npulse[:, s_idx].astype(np.int64)
    vals = np.where((p == 0) & (k <= 0), 0, np.maximum(p, 1) - 1 + np.maximum(k, 1))
    vals.sort(axis=1)
    out[:] = np.minimum(vals[:, (s_idx.shape[0] - 1) // 2], 255)


def decide(beam_amp: np.ndarray, beam_w: np.ndarray, s_idx: np.ndarray, v_idx: np.ndarray,
           e_ecal: np.ndarray, e_ps: np.ndarray, run: int, spill: int, first: int,
           fpar: np.ndarray, ipar: np.ndarray, cond: np.ndarray, bits: np.ndarray) -> None:
    n = e_ecal.shape[0]
    mip = beam_amp.astype(np.float64) * beam_w[None, :]
    beam = np.ones(n, bool)
    for c in s_idx:
        beam &= mip[:, c] >= fpar[F_S_MIN]
    for c in v_idx:
        beam &= ~(mip[:, c] >= fpar[F_V1_MAX])
    phys = beam & (e_ps >= fpar[F_PS_MIN]) & (e_ecal < fpar[F_ECAL_MAX])
    cal = beam & (fpar[F_CAL_MIN] <= e_ecal) & (e_ecal < fpar[F_CAL_MAX])
    c_bits = 4 | beam.astype(np.int64) * 2 | phys.astype(np.int64) | cal.astype(np.int64) * 8
    base = mix_int(mix_int(mix_int(run) ^ spill))
    h = mix(np.uint64(base) ^ (np.arange(n, dtype=np.uint64) + np.uint64(first)))
    sel_beam = mix(h ^ np.uint64(2)) % np.uint64(ipar[I_PRE_BEAM]) == 0
    sel_rand = mix(h ^ np.uint64(4)) % np.uint64(ipar[I_PRE_RANDOM]) == 0
    sel_cal = mix(h ^ np.uint64(8)) % np.uint64(ipar[I_PRE_CAL]) == 0
    fired = (phys.astype(np.int64) | (beam & sel_beam) * 2 | sel_rand * 4
             | (cal & sel_cal) * 8)
    cond[:] = c_bits
    bits[:] = fired & int(ipar[I_ENABLED])


def hit_starts(nhit: np.ndarray, keep: np.ndarray, starts: np.ndarray) -> int:
    off = hits.offsets(nhit)
    starts[:] = off[keep]
    return int(nhit[keep].sum(dtype=np.int64))


def gather_hits(src: np.ndarray, per_hit: int, nhit: np.ndarray, keep: np.ndarray,
                starts: np.ndarray, dst: np.ndarray) -> None:
    _, kept = hits.select(nhit, {"hit": src.reshape(-1, per_hit)}, keep)
    dst[:] = kept["hit"].reshape(-1)


def wave_peak_hits(nhit: np.ndarray, ch: np.ndarray, wave: np.ndarray, live: np.ndarray,
                   ped: np.ndarray, w0: int, w1: int, pulse_thr: float, adc_max: int,
                   pulses: bool, peak_thr: float, corr: np.ndarray, amp: np.ndarray,
                   npulse: np.ndarray, sat: np.ndarray) -> int:
    """wave_hits, then peak_hits (the compiled kernel does both in one pass)."""
    wave_hits(nhit, ch, wave, live, ped, w0, w1, pulse_thr, adc_max, pulses, amp, npulse, sat)
    peak_hits(ch, wave, ped, w0, w1, peak_thr, corr, amp)
    return 0


def wave_peak_board(wave: np.ndarray, live: np.ndarray, ped: np.ndarray, w0: int, w1: int,
                    pulse_thr: float, adc_max: int, trig: int, sample_ns: float, extra: bool,
                    pulses: bool, peak_thr: float, corr: np.ndarray, amp: np.ndarray,
                    tpeak: np.ndarray, npulse: np.ndarray, integral: np.ndarray,
                    sat: np.ndarray) -> int:
    """wave_board, then peak_board (the compiled kernel does both in one pass)."""
    wave_board(wave, live, ped, w0, w1, pulse_thr, adc_max, trig, sample_ns, extra, pulses,
               amp, tpeak, npulse, integral, sat)
    peak_board(wave, ped, w0, w1, peak_thr, corr, amp)
    return 0
