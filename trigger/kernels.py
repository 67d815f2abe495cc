"""Compiled trigger kernels: waveform features, energy sums, multiplicity, trigger decision.

Every kernel writes into output arrays the caller allocates, and has a twin with the same
signature in `trigger.reference` (NumPy) that the tests hold it to. The arithmetic (float64
accumulation in channel order, the same comparisons) is deliberately identical in both so
that decisions agree exactly. `trigger.core` is the typed public entry point.
"""

from __future__ import annotations

import numpy as np

from trigger.jit import kernel

#: A pulse is a sample above threshold that is the highest within +-PEAK_HALF_WIDTH samples
#: (strictly above those before it): pulses closer than 3 samples (37.5 ns) merge.
PEAK_HALF_WIDTH = 2  # _count_pulses is written out for this value

# splitmix64 constants as uint64 globals: numba would turn a mix of uint64 and int literals
# into float64.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_U1, _U2, _U3, _U4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
#: samples ahead that the waveform kernel touches, so that memory arrives before it is needed
#: (the hardware prefetcher alone left the kernel waiting on memory half of the time)
_AHEAD = np.uint64(1024)

# fpar / ipar layouts of `decide` (see trigger.core.DecisionParams)
F_S_MIN, F_V1_MAX, F_PS_MIN, F_ECAL_MAX, F_CAL_MIN, F_CAL_MAX = range(6)
I_PRE_BEAM, I_PRE_RANDOM, I_PRE_CAL, I_ENABLED = range(4)


@kernel
def _mix(x):
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@kernel
def _interior_peaks(flat, base, ns, lv):
    # its own function with an int16 counter: mixed into the edge terms below, numba would
    # widen the counter to int64 and LLVM would no longer vectorise the loop
    cnt = np.int16(0)
    for i in range(_U2, np.uint64(ns - 2)):
        j = base + i
        v = flat[j]
        before = max(flat[j - _U1], flat[j - _U2])
        after = max(flat[j + _U1], flat[j + _U2])
        cnt = np.int16(cnt + np.int16((v >= lv) & (v > before) & (v >= after)))
    return cnt


@kernel
def _count_pulses(flat, base, ns, lvl):
    if lvl > 32767:
        return 0
    lv = np.int16(lvl)
    # written out for PEAK_HALF_WIDTH == 2 and ns >= 4 (the geometry's minimum); no branch
    # on the data (noisy traces would mispredict), so that the interior loop vectorises
    w0, w1, w2, w3 = flat[base], flat[base + _U1], flat[base + _U2], flat[base + _U3]
    e = base + np.uint64(ns)
    x4, x3, x2, x1 = flat[e - _U4], flat[e - _U3], flat[e - _U2], flat[e - _U1]
    edge = (int((w0 >= lv) & (w0 >= w1) & (w0 >= w2))
            + int((w1 >= lv) & (w1 > w0) & (w1 >= w2) & (w1 >= w3))
            + int((x2 >= lv) & (x2 > x3) & (x2 > x4) & (x2 >= x1))
            + int((x1 >= lv) & (x1 > x2) & (x1 > x3)))
    return edge + np.int64(_interior_peaks(flat, base, ns, lv))


@kernel
def wave_board(wave, live, n_ped, pulse_thr, adc_max, trig, sample_ns, extra,
               amp, tpeak, npulse, integral, sat):
    n, nch, ns = wave.shape
    # one flat view and unsigned indices: numba then emits no negative-index wraparound,
    # which is what lets LLVM vectorise the per-channel reduction over the samples
    flat = wave.reshape(n * nch * ns)
    nsu = np.uint64(ns)
    npu = np.uint64(n_ped)
    total = np.uint64(n * nch * ns)
    touch = np.int16(0)
    for e in range(n):
        anysat = 0
        for c in range(nch):
            base = np.uint64(e * nch + c) * nsu
            if base + _AHEAD < total:
                touch ^= flat[base + _AHEAD]
            s0 = np.int32(0)
            for i in range(npu):
                s0 = np.int32(s0 + flat[base + i])
            # int32 accumulators (numba would widen to int64 and halve the vector width);
            # 1024 samples of 16 bits cannot overflow them
            tot = np.int32(0)
            mx = np.int16(-32768)
            for i in range(nsu):
                v = flat[base + i]
                tot = np.int32(tot + v)
                mx = max(mx, v)
            ped = s0 / n_ped
            a = mx - ped
            amp[e, c] = a
            if mx >= adc_max and live[c]:
                anysat = 1
            cnt = 0
            active = a >= pulse_thr  # quiet channels (most of them) skip the pulse search
            if active:
                # integer samples: v - ped >= thr  <=>  v >= ceil(ped + thr)
                cnt = _count_pulses(flat, base, ns, np.int64(np.ceil(ped + pulse_thr)))
            npulse[e, c] = min(cnt, 255)
            if extra:  # the trigger needs neither: skipping them halves the memory traffic
                t = 0.0
                if active:
                    imx = 0
                    while flat[base + np.uint64(imx)] != mx:
                        imx += 1
                    t = (imx - trig) * sample_ns
                tpeak[e, c] = t
                integral[e, c] = tot - ped * ns
        sat[e] = anysat
    return touch  # returned so that the touching loads are not optimised away


@kernel
def feature_sat(amp, limit, sat):
    n, nch = amp.shape
    for e in range(n):
        s = 0
        for c in range(nch):
            if np.float64(amp[e, c]) >= limit[c]:
                s = 1
        sat[e] = s


@kernel
def accumulate(amp, weight, group, zthr, out):
    n, nch = amp.shape
    for e in range(n):
        for c in range(nch):
            g = group[c]
            if g < 0:
                continue
            a = np.float64(amp[e, c])
            if a >= zthr:
                out[e, g] += a * weight[c]


@kernel
def multiplicity(amp, npulse, weight, s_idx, out):
    n = amp.shape[0]
    m = s_idx.shape[0]
    vals = np.zeros(max(m, 1), np.int64)
    for e in range(n):
        if m == 0:
            out[e] = 1
            continue
        for j in range(m):
            c = s_idx[j]
            k = np.int64(np.floor(np.float64(amp[e, c]) * weight[c] + 0.5))
            p = np.int64(npulse[e, c])
            x = 0 if (p == 0 and k <= 0) else (p if p > 1 else 1) - 1 + (k if k > 1 else 1)
            i = j  # insertion sort: m is at most a handful of counters
            while i > 0 and vals[i - 1] > x:
                vals[i] = vals[i - 1]
                i -= 1
            vals[i] = x
        out[e] = min(vals[(m - 1) // 2], 255)


@kernel
def decide(beam_amp, beam_w, s_idx, v_idx, e_ecal, e_ps, run, spill, first,
           fpar, ipar, cond, bits):
    n = e_ecal.shape[0]
    base = _mix(_mix(_mix(np.uint64(run)) ^ np.uint64(spill)))
    pre_beam = np.uint64(ipar[I_PRE_BEAM])
    pre_rand = np.uint64(ipar[I_PRE_RANDOM])
    pre_cal = np.uint64(ipar[I_PRE_CAL])
    enabled = ipar[I_ENABLED]
    for e in range(n):
        beam = True
        for j in range(s_idx.shape[0]):
            c = s_idx[j]
            if np.float64(beam_amp[e, c]) * beam_w[c] < fpar[F_S_MIN]:
                beam = False
        for j in range(v_idx.shape[0]):
            c = v_idx[j]
            if np.float64(beam_amp[e, c]) * beam_w[c] >= fpar[F_V1_MAX]:
                beam = False
        c_bits = 4  # RANDOM: every event is a candidate, the hash picks 1 in N
        if beam:
            c_bits |= 2
            if e_ps[e] >= fpar[F_PS_MIN] and e_ecal[e] < fpar[F_ECAL_MAX]:
                c_bits |= 1
            if fpar[F_CAL_MIN] <= e_ecal[e] < fpar[F_CAL_MAX]:
                c_bits |= 8
        h = _mix(base ^ np.uint64(first + e))
        fired = c_bits & 1
        if (c_bits & 2) and _mix(h ^ np.uint64(2)) % pre_beam == 0:
            fired |= 2
        if _mix(h ^ np.uint64(4)) % pre_rand == 0:
            fired |= 4
        if (c_bits & 8) and _mix(h ^ np.uint64(8)) % pre_cal == 0:
            fired |= 8
        cond[e] = c_bits
        bits[e] = fired & enabled
