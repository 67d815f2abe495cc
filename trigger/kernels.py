"""Compiled trigger kernels: waveform features, energy sums, multiplicity, trigger decision.

Every kernel writes into output arrays the caller allocates, and has a twin with the same
signature in `trigger.reference` (NumPy) that the tests hold it to. The arithmetic (float64
accumulation in channel order, the same comparisons) is deliberately identical in both so
that decisions agree exactly. `trigger.core` is the typed public entry point.
"""

from __future__ import annotations

import numpy as np

from trigger.jit import kernel, prefetch

#: A pulse is a sample above threshold that is the highest within +-PEAK_HALF_WIDTH samples
#: (strictly above the one before it, not below the one after): two pulses 2 samples (25 ns)
#: apart are two, as the feature-mode front end counts them (decision 0005).
PEAK_HALF_WIDTH = 1  # _pulses and _trace_pulses are written out for this value

# splitmix64 constants as uint64 globals: numba would turn a mix of uint64 and int literals
# into float64.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
#: wave_board: events ahead whose samples are prefetched, and int16 samples per cache line
_DIST = np.uint64(4)
_LINE = np.uint64(32)
#: wave_hits: hits ahead whose trace is prefetched (a 32-sample trace is one cache line)
_DIST_HITS = np.uint64(8)
#: the largest gap `neighbour_gaps` stamps, ns (uint16; the features' dt_prev and dt_next)
GAP_MAX = 65535
#: guard rows around a trace in _pulses: below any sample, so no comparison with them fails
_LOW = np.int16(-32768)

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
def _fold_max(flat, base, rows, nch, buf):
    # max over the rows of one (rows, nch) block by halving it: every loop runs over a
    # contiguous run of rows * nch / 2 samples, which LLVM vectorises whatever nch is
    h = (rows + 1) // 2
    m = np.uint64((rows - h) * nch)
    off = np.uint64(h * nch)
    for j in range(m):
        buf[j] = max(flat[base + j], flat[base + off + j])
    for j in range(m, off):
        buf[j] = flat[base + j]
    rows = h
    while rows > 1:
        h = (rows + 1) // 2
        m = np.uint64((rows - h) * nch)
        off = np.uint64(h * nch)
        for j in range(m):
            buf[j] = max(buf[j], buf[off + j])
        rows = h


@kernel
def _tile(t, nch, rows):
    # t[:nch] repeated over `rows` rows, by doubling (long contiguous copies)
    filled = np.uint64(nch)
    total = np.uint64(rows * nch)
    while filled < total:
        k = min(filled, total - filled)
        for j in range(k):
            t[filled + j] = t[j]
        filled += k


@kernel
def _pulses(flat, base, ns, nch, w0, w1, pad, lvt, f):
    # the pulses of the reconstruction window's rows w0 .. w1 - 1. pad: the block between
    # one guard row above and one below (written by the caller), so the comparisons with
    # the sample before and after are one branch-free loop over the window's rows and all
    # channels; only the window and a row on each side are copied in. f[:nch] ends with
    # the count per channel
    r1, r2 = np.uint64(nch), np.uint64(2 * nch)  # uint64 row offsets: mixed with int64,
    a = np.uint64(max(w0 - 1, 0) * nch)  # numba would compute them in float64
    b = np.uint64(min(w1 + 1, ns) * nch)
    for j in range(a, b):
        pad[r1 + j] = flat[base + j]
    win = np.uint64(w0 * nch)
    size = np.uint64((w1 - w0) * nch)
    for q in range(size):
        v = pad[r1 + win + q]
        f[q] = np.int16((v >= lvt[q]) & (v > pad[win + q]) & (v >= pad[r2 + win + q]))
    rows = w1 - w0
    while rows > 1:
        h = (rows + 1) // 2
        m = np.uint64((rows - h) * nch)
        off = np.uint64(h * nch)
        for j in range(m):
            f[j] = np.int16(f[j] + f[off + j])
        rows = h


@kernel
def _extra(flat, base, w0, w1, nch, c, ped, mx, active, trig, sample_ns):
    # peak time and integral over the reconstruction window
    tot = 0
    imx = -1
    for i in range(w0, w1):
        v = flat[base + np.uint64(i * nch + c)]
        tot += v
        if imx < 0 and v == mx:
            imx = i
    t = (imx - trig) * sample_ns if active else 0.0
    return t, tot - ped * (w1 - w0)


@kernel
def wave_board(wave, live, ped, w0, w1, pulse_thr, adc_max, trig, sample_ns, extra, pulses,
               amp, tpeak, npulse, integral, sat):
    # wave_peak_board without the peak correction (no amplitude reaches an infinite
    # threshold): the largest sample of the window minus the pedestal
    return wave_peak_board(wave, live, ped, w0, w1, pulse_thr, adc_max, trig, sample_ns,
                           extra, pulses, np.inf, np.ones(2), amp, tpeak, npulse, integral,
                           sat)


@kernel
def _peak_amplitudes(flat, base, ns, nch, w0, w1, ped_c, peak_thr, corr, mx, amp, e):
    # peak_board on one event's board block while it is in the cache, from the maximum its
    # pass found: the same position and arithmetic, the same result
    for c in range(nch):
        if amp[e, c] < peak_thr:
            continue
        ped = ped_c[c]
        imx = w1 - 1
        for i in range(w0, w1):
            if flat[base + np.uint64(i * nch + c)] == mx[c]:
                imx = i
                break
        y0 = mx[c] - ped
        if imx == 0 or imx == ns - 1 or y0 <= 0.0 or y0 < peak_thr:
            continue
        ym = flat[base + np.uint64((imx - 1) * nch + c)] - ped
        yp = flat[base + np.uint64((imx + 1) * nch + c)] - ped
        a = _corrected(y0, ym, yp, corr)
        if a > 0.0:
            amp[e, c] = a


@kernel
def wave_peak_board(wave, live, ped, w0, w1, pulse_thr, adc_max, trig, sample_ns, extra,
                    pulses, peak_thr, corr, amp, tpeak, npulse, integral, sat):
    # wave_board then peak_board in one pass over the events: each event's peak correction
    # while its block is in the cache (apart, peak_board read every active trace from memory
    # again, strided, and summed its pedestal again). The same arithmetic as the two, in the
    # same order: the same result to the bit.
    # wave is (count, samples, nch): for one event the board is a (samples, nch) block and
    # every reduction over samples runs across channels, in contiguous vectorised loops.
    # Amplitude, saturation and pulses come from the reconstruction window, samples w0 ..
    # w1 - 1 (daq.geometry.reco_window); the pedestal is the calibration's, `ped` per channel
    # (decision 0005, "Pedestal"). pulse_thr >= 0 (the configuration's bounds; a timed
    # board's is the zero threshold) is assumed by the guard rows of _pulses: with a
    # pedestal >= 0 no level is at or below them.
    n, ns, nch = wave.shape
    flat = wave.reshape(n * ns * nch)
    blk = np.uint64(ns) * np.uint64(nch)
    total = np.uint64(n) * blk
    rows = w1 - w0
    win = np.uint64(w0 * nch)
    mx = np.empty(((rows + 1) // 2) * nch, np.int16)
    act = np.empty(nch, np.uint8)
    pad = np.full((ns + 2) * nch, _LOW, np.int16)
    lvt = np.empty(rows * nch, np.int16)
    f = np.empty(rows * nch, np.int16)
    for e in range(n):
        base = np.uint64(e) * blk
        ahead = base + _DIST * blk
        if ahead + blk <= total:  # the hardware prefetcher alone leaves the loop waiting
            for j in range(np.uint64(0), blk, _LINE):
                prefetch(flat, ahead + j)
        _fold_max(flat, base + win, rows, nch, mx)
        anysat = 0
        npeak = 0
        for c in range(nch):
            a = np.float32(mx[c] - ped[c])
            amp[e, c] = a
            npeak += a >= peak_thr
            anysat |= (mx[c] >= adc_max) & (live[c] != 0)
        sat[e] = anysat
        if npeak:
            _peak_amplitudes(flat, base, ns, nch, w0, w1, ped, peak_thr, corr, mx, amp, e)
        if extra:  # the trigger needs neither peak time nor integral
            for c in range(nch):
                t, integ = _extra(flat, base, w0, w1, nch, c, ped[c], mx[c],
                                  mx[c] - ped[c] >= pulse_thr, trig, sample_ns)
                tpeak[e, c] = t
                integral[e, c] = integ
        nact = 0
        if pulses:
            for c in range(nch):
                # a pulse is a sample v with v >= ceil(ped + thr) (as in the reference; not
                # the same as amp >= thr when ped + thr rounds); a channel whose maximum is
                # below that level has none, and one that has a sample there fits in int16
                lvl = np.ceil(ped[c] + pulse_thr)
                act[c] = mx[c] >= lvl
                nact += act[c]
                lvt[c] = np.int16(min(max(lvl, -32768.0), 32767.0))
        if nact == 0:  # quiet boards skip the search
            for c in range(nch):
                npulse[e, c] = 0
            continue
        _tile(lvt, nch, rows)
        _pulses(flat, base, ns, nch, w0, w1, pad, lvt, f)
        for c in range(nch):  # an inactive channel has no sample at its level: no pulse
            npulse[e, c] = min(f[c], 255) * act[c]
    return 0


@kernel
def _corrected(y0, ym, yp, corr):
    # the largest sample y0 (pedestal subtracted) corrected to the pulse's peak by the ratio
    # of its neighbours ym, yp: daq.geometry.peak_correction's table, interpolated
    last = corr.shape[0] - 1
    u = min(max((yp - ym) / y0 + 1.0, 0.0), 2.0) * (last / 2.0)
    k = min(int(u), last - 1)
    w = u - k
    return y0 * (corr[k] * (1.0 - w) + corr[k + 1] * w)


@kernel
def peak_board(wave, ped, w0, w1, pulse_thr, corr, amp):
    # wave (count, samples, nch): amplitudes of at least pulse_thr become the pulse's peak
    # (the rest are noise; left as the largest sample). `amp` comes from wave_board (the
    # window's largest sample minus the pedestal), so that sample is round(amp + pedestal),
    # exactly (float32 keeps 4095 - ped to 1e-3): its first position in the window is found
    # by a scan that stops there, instead of reading the whole trace. The
    # same maximum, position and arithmetic as _peak: the same result to the bit. The
    # trigger corrects in wave_peak_board's pass; this pass on its own is what the tests
    # hold that one to.
    n, ns, nch = wave.shape
    flat = wave.reshape(n * ns * nch)
    step = np.uint64(nch)
    for e in range(n):
        for c in range(nch):
            if amp[e, c] < pulse_thr:
                continue
            base = np.uint64(e * ns * nch + c)
            p = ped[c]
            mx = np.int16(np.round(amp[e, c] + p))
            imx = w1 - 1
            for i in range(w0, w1):
                if flat[base + np.uint64(i) * step] == mx:
                    imx = i
                    break
            y0 = mx - p
            if imx == 0 or imx == ns - 1 or y0 <= 0.0 or y0 < pulse_thr:
                continue
            ym = flat[base + np.uint64(imx - 1) * step] - p
            yp = flat[base + np.uint64(imx + 1) * step] - p
            a = _corrected(y0, ym, yp, corr)
            if a > 0.0:
                amp[e, c] = a
    return 0


@kernel
def peak_hits(ch, wave, ped_c, w0, w1, pulse_thr, corr, amp):
    # peak_board over hits: wave (nhits, samples), ch their channels, `amp` from wave_hits;
    # the same scan that stops at the first maximum, the same result as _peak to the bit
    nh, ns = wave.shape
    flat = wave.reshape(nh * ns)
    for h in range(nh):
        if amp[h] < pulse_thr:
            continue
        base = h * ns
        ped = ped_c[ch[h]]
        mx = np.int16(np.round(amp[h] + ped))
        imx = w1 - 1
        for i in range(w0, w1):
            if flat[base + i] == mx:
                imx = i
                break
        y0 = mx - ped
        if imx == 0 or imx == ns - 1 or y0 <= 0.0 or y0 < pulse_thr:
            continue
        ym = flat[base + imx - 1] - ped
        yp = flat[base + imx + 1] - ped
        a = _corrected(y0, ym, yp, corr)
        if a > 0.0:
            amp[h] = a
    return 0


@kernel
def _trace_pulses(flat, base, ns, w0, w1, lvl, pad):
    # wave_board's pulse definition on one contiguous trace, the same way: the trace between
    # a guard sample of -32768 on each side (pad), one branch-free loop over the window
    for i in range(ns):
        pad[i + 1] = flat[base + np.uint64(i)]
    cnt = 0
    for i in range(w0, w1):
        v = pad[i + 1]
        cnt += (v >= lvl) & (v > pad[i]) & (v >= pad[i + 2])
    return min(cnt, 255)


@kernel
def wave_hits(nhit, ch, wave, live, ped, w0, w1, pulse_thr, adc_max, pulses, amp, npulse,
              sat):
    # wave is (nhits, samples): each hit's trace is contiguous. wave_peak_hits without the
    # peak correction (no amplitude reaches an infinite threshold): the largest sample
    return wave_peak_hits(nhit, ch, wave, live, ped, w0, w1, pulse_thr, adc_max, pulses,
                          np.inf, np.ones(2), amp, npulse, sat)


@kernel
def wave_peak_hits(nhit, ch, wave, live, ped, w0, w1, pulse_thr, adc_max, pulses, peak_thr,
                   corr, amp, npulse, sat):
    # wave_hits then peak_hits, in one pass over the traces: each trace's peak correction
    # while it is still in the cache (apart, the second pass read the hits from memory
    # again). The same arithmetic as the two, in the same order: the same result to the bit.
    # wave is (nhits, samples): each hit's trace is contiguous. The arithmetic is
    # wave_board's, channel by channel, in passes that each vectorise: the traces once
    # (the window's maximum), then the amplitudes, the saturation bits per event, and
    # the pulses of the boards that count them
    nh, ns = wave.shape
    flat = wave.reshape(nh * ns)
    stride = np.uint64(ns)
    total = np.uint64(nh) * stride
    mxs = np.empty(nh, np.int16)
    peaks = np.empty(nh, np.float64)  # the corrected amplitude, or -1.0: left as it is
    for h in range(nh):
        base = np.uint64(h) * stride
        ahead = base + _DIST_HITS * stride
        if ahead < total:  # as in wave_board: the loop is too short to hide the misses
            prefetch(flat, ahead)
        mx = flat[base + np.uint64(w0)]
        for i in range(w0, w1):
            mx = max(mx, flat[base + np.uint64(i)])
        mxs[h] = mx
        peaks[h] = -1.0
        p = ped[ch[h]]
        a0 = np.float32(mx - p)
        if a0 >= peak_thr:
            imx = w1 - 1
            for i in range(w0, w1):
                if flat[base + np.uint64(i)] == mx:
                    imx = i
                    break
            y0 = mx - p
            if imx != 0 and imx != ns - 1 and y0 > 0.0 and y0 >= peak_thr:
                ym = flat[base + np.uint64(imx - 1)] - p
                yp = flat[base + np.uint64(imx + 1)] - p
                a = _corrected(y0, ym, yp, corr)
                if a > 0.0:
                    peaks[h] = a
    for h in range(nh):
        amp[h] = mxs[h] - ped[ch[h]]
    for h in range(nh):
        if peaks[h] > 0.0:
            amp[h] = peaks[h]
    h = 0
    for e in range(nhit.shape[0]):
        s = 0
        for _ in range(nhit[e]):
            s |= (mxs[h] >= adc_max) & (live[ch[h]] != 0)
            h += 1
        sat[e] = s
    if pulses:
        pad = np.full(ns + 2, _LOW, np.int16)
        for h in range(nh):
            # levels as in wave_board: a trace whose maximum is below has no pulse
            lvl = np.ceil(ped[ch[h]] + pulse_thr)
            npulse[h] = _trace_pulses(flat, np.uint64(h) * stride, ns, w0, w1, lvl, pad) \
                if mxs[h] >= lvl else 0
    return 0


@kernel
def hit_order(nhit, ch):
    # index of the first hit whose channel is not above the previous one of its event, or -1
    h = 0
    for e in range(nhit.shape[0]):
        prev = np.int64(-1)
        for _ in range(nhit[e]):
            c = np.int64(ch[h])
            if c <= prev:
                return h
            prev = c
            h += 1
    return -1


@kernel
def feature_hits(nhit, ch, amp, limit, weight, group, zthr, sat, out):
    # one pass over a feature-mode board's hits: hit_order's check (its result), the
    # saturation bits, and accumulate_hits' additions in its order
    h = 0
    for e in range(nhit.shape[0]):
        s = 0
        prev = np.int64(-1)
        for _ in range(nhit[e]):
            c = np.int64(ch[h])
            if c <= prev:
                return h
            prev = c
            a = np.float64(amp[h])
            if a >= limit[c]:
                s = 1
            g = group[c]
            if g >= 0 and a >= zthr:
                out[e, g] += a * weight[c]
            h += 1
        sat[e] = s
    return -1


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
def accumulate_hits(nhit, ch, amp, weight, group, zthr, out):
    # hits run channel-ascending within an event: the additions of `accumulate`, in its order
    h = 0
    for e in range(nhit.shape[0]):
        for _ in range(nhit[e]):
            c = ch[h]
            g = group[c]
            if g >= 0:
                a = np.float64(amp[h])
                if a >= zthr:
                    out[e, g] += a * weight[c]
            h += 1


@kernel
def feature_columns(sums, e_ecal, e_ps, e_hcal, e_veto, e_srd):
    # the float32 feature arrays of the wire contract from the float64 sums, in one pass
    for e in range(sums.shape[0]):
        e_ecal[e] = np.float32(sums[e, 0] + sums[e, 1])
        e_ps[e] = np.float32(sums[e, 0])
        for k in range(4):
            e_hcal[e, k] = np.float32(sums[e, 2 + k])
        e_veto[e] = np.float32(sums[e, 6])
        e_srd[e] = np.float32(sums[e, 7])


@kernel
def neighbour_gaps(ts, prev, nxt):
    # ns from each event to the one before (prev) and after it (nxt) in the slice,
    # saturated at GAP_MAX; 0 where unknown: at the slice's ends (that neighbour is in
    # another slice) and for a time that runs backwards
    n = ts.shape[0]
    if n == 0:
        return
    prev[0] = 0
    nxt[n - 1] = 0
    for i in range(1, n):
        d = ts[i] - ts[i - 1]
        g = np.uint16(0) if d < 0 else np.uint16(min(d, GAP_MAX))
        prev[i] = g
        nxt[i - 1] = g


@kernel
def beam_dense(amp, npulse, zthr, amp_out, np_out):
    # a channel below the zero threshold reads zero, as a zero-suppressed board sends it
    n, nch = amp.shape
    for e in range(n):
        for c in range(nch):
            keep = np.float64(amp[e, c]) >= zthr
            amp_out[e, c] = amp[e, c] if keep else np.float32(0.0)
            np_out[e, c] = npulse[e, c] if keep else np.uint8(0)


@kernel
def beam_dense_hits(nhit, ch, amp, npulse, zthr, amp_out, np_out):
    nch = amp_out.shape[1]
    h = 0
    for e in range(nhit.shape[0]):
        for c in range(nch):
            amp_out[e, c] = 0.0
            np_out[e, c] = 0
        for _ in range(nhit[e]):
            if np.float64(amp[h]) >= zthr:
                amp_out[e, ch[h]] = amp[h]
                np_out[e, ch[h]] = npulse[h]
            h += 1


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


#: gather_hits: kept events ahead whose first hit is prefetched (kept events lie far apart)
SELECT_AHEAD = 8


@kernel
def hit_starts(nhit, keep, starts):
    # first hit of each kept event (keep: ascending, distinct); returns their hits' total
    h = np.int64(0)
    total = np.int64(0)
    j = 0
    k = keep.shape[0]
    for e in range(nhit.shape[0]):
        if j == k:
            break
        if e == keep[j]:
            starts[j] = h
            total += nhit[e]
            j += 1
        h += nhit[e]
    return total


@kernel
def gather_hits(src, per_hit, nhit, keep, starts, dst):
    # the kept events' hits in order; src and dst flat, `per_hit` elements per hit
    o = 0
    k = keep.shape[0]
    for j in range(k):
        if j + SELECT_AHEAD < k:
            prefetch(src, np.uint64(starts[j + SELECT_AHEAD] * per_hit))
        s = starts[j] * per_hit
        n = np.int64(nhit[keep[j]]) * per_hit
        for i in range(n):
            dst[o + i] = src[s + i]
        o += n
