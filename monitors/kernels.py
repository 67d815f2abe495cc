"""The monitors' per-slice aggregation in one compiled pass: counts, spectra bins, E_HCAL.

Twin: `monitors.reference.aggregate` (NumPy and hist), which the tests hold it to bit for
bit. The arithmetic is deliberately the same: thresholds are compared in float32, as NumPy
compares a float32 array with a Python float; E_HCAL is the float32 sum over the modules in
module order (`identify.hcal_total`); a spectrum bin is computed as boost-histogram's
regular axis computes it (`_flow_index`); the float64 sums of the filled energies stay with
NumPy, whose pairwise summation a loop would not reproduce in the last bits.

The slice is walked once, in chunks of `_CHUNK` events; each chunk goes through a few short
loops while it is in the L1/L2 cache, written so that LLVM vectorises all but the histogram
increments (branch-free, unsigned indices: numba wraps negative signed indices, and that
select alone stops the vectoriser).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from monitors.config import MonitorConfig
from monitors.identify import ecal_sat_bit, has_timing, has_track
from monitors.spectra import Spectra, spectrum_range
from monitors.summary import BEAM_BIT, Counts
from trigger.jit import kernel, prefetch

# thresholds (float32, `_thresholds`)
(T_SRD_MIN, T_SRD_MAX, T_PS_MIN, T_ECAL_MIN, T_VETO_ZERO, T_HCAL_ZERO, T_MU_MODULE,
 T_MU_HCAL_MAX, T_HAD_MIN, T_SIG_ECAL, T_SIG_HCAL, T_P_MIN, T_P_MAX, T_TRK_MAX, T_C_ECAL,
 T_DIMU_MIN, T_DIMU_MAX, T_DIMU_MODULES, T_ISO_BEFORE, T_ISO_AFTER) = range(20)
# slots of the int64 counts that `_aggregate` adds to
(C_BEAM_COND, C_ACCEPTED, C_INCOMPLETE, C_PILEUP, C_MULT_SUM, C_ELECTRONS, C_VETO_ZERO,
 C_HCAL_ZERO, C_SIGNAL_BOX, C_NAN) = range(10)
C_TRIGGERS, C_SHADOW, C_SPECIES, C_MISSING = 10, 14, 18, 22  # 4, 4, 4 and 8 slots
C_SIDEBAND_C, C_DIMUON = C_MISSING + 8, C_MISSING + 9  # after one slot per `missing` bit
C_SAT_BOX, C_SAT_C = C_MISSING + 10, C_MISSING + 11  # saturated ECAL: out of the box, of C
C_ISOLATED = C_MISSING + 12  # complete events isolated in time: the composition's sample
N_COUNTS = C_MISSING + 13
_BEAM = BEAM_BIT.bit_length() - 1  # BEAM_BIT is one bit: its position
_ELECTRON, _HADRON, _MUON = 0, 1, 2  # monitors.identify.Species; OTHER is the rest

#: events per chunk (a multiple of 64, at most 8 * 255: see `_bit_counts`, `_fill_chunk`)
_CHUNK = np.uint64(1024)
#: E_HCAL histogram copies that consecutive events take in turn: most events fall in one
#: bin, and each increment would otherwise wait for the previous one's store
_HCAL_COPIES = np.uint64(4)
_ONES = np.uint64(0x0101010101010101)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_BYTE = np.uint64(0xFF)
_U2, _U4, _U7, _U16, _U32, _U64 = (np.uint64(k) for k in (2, 4, 7, 16, 32, 64))
#: neighbour gap that every isolation cut passes: what an event without gaps is given
_ALONE = np.uint16(65535)


@kernel
def _bit_counts(a, c):
    # c[k] += bytes of `a` with bit k set (k < 8), c[8] += non-zero bytes. Eight bytes at
    # a time, one 8-bit counter per byte lane: exact while len(a) <= 8 * 255.
    m = a.shape[0] // 8
    w = a[:m * 8].view(np.uint64)
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = nz = np.uint64(0)
    for k in range(m):
        x = w[k]
        b0 += x & _ONES
        b1 += (x >> np.uint64(1)) & _ONES
        b2 += (x >> np.uint64(2)) & _ONES
        b3 += (x >> np.uint64(3)) & _ONES
        b4 += (x >> np.uint64(4)) & _ONES
        b5 += (x >> np.uint64(5)) & _ONES
        b6 += (x >> np.uint64(6)) & _ONES
        b7 += (x >> _U7) & _ONES
        nz += ((x | ((x & _LOW7) + _LOW7)) >> _U7) & _ONES  # lane's top bit: byte != 0
    for lane in range(8):
        s = np.uint64(8 * lane)
        c[0] += np.int64((b0 >> s) & _BYTE)
        c[1] += np.int64((b1 >> s) & _BYTE)
        c[2] += np.int64((b2 >> s) & _BYTE)
        c[3] += np.int64((b3 >> s) & _BYTE)
        c[4] += np.int64((b4 >> s) & _BYTE)
        c[5] += np.int64((b5 >> s) & _BYTE)
        c[6] += np.int64((b6 >> s) & _BYTE)
        c[7] += np.int64((b7 >> s) & _BYTE)
        c[8] += np.int64((nz >> s) & _BYTE)
    for j in range(m * 8, a.shape[0]):
        x = np.int64(a[j])
        for bit in range(8):
            c[bit] += (x >> bit) & 1
        c[8] += x != 0


@kernel
def _flow_index(z, n):
    # Storage index with flow bins (0 underflow, n + 1 overflow) of the axis coordinate
    # z = (x - lo) / delta, as boost::histogram::axis::regular::index computes it:
    # z < 1 and z >= 0: int(z * n), else -1 below, n above or NaN. Branch-free.
    inside = (z >= 0.0) & (z < 1.0)
    v = z * n if inside else (-1.0 if z < 0.0 else np.float64(n))
    return np.uint32(np.int64(v) + 1)


@kernel
def _two_mips(v, lo, hi):
    return np.uint8((v >= lo) & (v <= hi))


@kernel
def _hcal_chunk(e_hcal, i0, nb, thr, eh, every, two):
    # eh[k]: E_HCAL of event i0 + k, float32, summed in module order as identify.hcal_total;
    # every[k]: each module >= the muon's MIP cut (identify._every_module); two[k]: modules
    # in the dimuon's two-MIP range (identify.dimuon)
    nmod = e_hcal.shape[1]
    mu_module, lo, hi = thr[T_MU_MODULE], thr[T_DIMU_MIN], thr[T_DIMU_MAX]
    if nmod == 4:  # the geometry's four modules, written out so that the loop vectorises
        for k in range(nb):
            i = i0 + k
            a, b, c, d = e_hcal[i, 0], e_hcal[i, 1], e_hcal[i, 2], e_hcal[i, 3]
            eh[k] = ((a + b) + c) + d
            every[k] = (a >= mu_module) & (b >= mu_module) & (c >= mu_module) & (
                d >= mu_module)
            two[k] = (_two_mips(a, lo, hi) + _two_mips(b, lo, hi) + _two_mips(c, lo, hi)
                      + _two_mips(d, lo, hi))
        return
    for k in range(nb):
        i = i0 + k
        v = e_hcal[i, 0]
        s = v
        ev = v >= mu_module
        n2 = _two_mips(v, lo, hi)
        for j in range(1, nmod):
            v = e_hcal[i, j]
            s += v
            ev &= v >= mu_module
            n2 += _two_mips(v, lo, hi)
        eh[k] = s
        every[k] = ev
        two[k] = n2


@kernel
def _bins_chunk(e_ecal, eh, i0, nb, lo, delta, n_ecal, n_hcal, n_px, n_py, ie, ih, px, py):
    # flow indices of every event of the chunk on the four axes; the two plane axes have
    # the same range as the 1-D spectra, so each energy takes one division (as boost's)
    for k in range(nb):
        ze = (np.float64(e_ecal[i0 + k]) - lo) / delta
        zh = (np.float64(eh[k]) - lo) / delta
        ie[k] = _flow_index(ze, n_ecal)
        ih[k] = _flow_index(zh, n_hcal)
        px[k] = _flow_index(ze, n_px)
        py[k] = _flow_index(zh, n_py)


@kernel
def _physics_chunk(e_ecal, e_ps, e_veto, e_srd, mult, p, ntrk, dt_prev, dt_next, missing, sat,
                   ecal_sat, thr, i0, nb, eh, every, two, out):
    # monitors.identify's definitions on the complete events of the chunk, branch-free
    srd_min, srd_max, ps_min = thr[T_SRD_MIN], thr[T_SRD_MAX], thr[T_PS_MIN]
    ecal_min, veto_zero, hcal_zero = thr[T_ECAL_MIN], thr[T_VETO_ZERO], thr[T_HCAL_ZERO]
    mu_max, had_min = thr[T_MU_HCAL_MAX], thr[T_HAD_MIN]
    sig_ecal, sig_hcal, c_ecal = thr[T_SIG_ECAL], thr[T_SIG_HCAL], thr[T_C_ECAL]
    p_min, p_max, trk_max = thr[T_P_MIN], thr[T_P_MAX], thr[T_TRK_MAX]
    dimu_modules = thr[T_DIMU_MODULES]
    before, after = thr[T_ISO_BEFORE], thr[T_ISO_AFTER]
    alone = 0
    pileup = mult_sum = electrons = v_zero = h_zero = signal = electron = hadron = muon = 0
    nan = side_c = dimu = sat_box = sat_c = 0
    for k in range(nb):
        i = i0 + k
        ok = missing[i] == 0
        mu = int(mult[i])
        pileup += ok & (mu > 1)
        mult_sum += mu if ok else 0
        h, ec, ve, srd = eh[k], e_ecal[i], e_veto[i], e_srd[i]
        nan += ok & ((ec != ec) | (h != h))  # NaN in a spectrum
        tag = (srd >= srd_min) & (srd <= srd_max)
        eps = ok & tag & (e_ps[i] >= ps_min)  # species electron
        ele = eps & (ec >= ecal_min)  # electron sample
        quiet_veto = ve < veto_zero
        iso = ok & (dt_prev[i] > before) & (dt_next[i] > after)  # identify.isolated
        alone += iso
        electron += eps & iso
        electrons += ele
        v_zero += ele & quiet_veto
        h_zero += ele & (h < hcal_zero)
        track = (p[i] >= p_min) & (p[i] <= p_max) & (ntrk[i] <= trk_max)  # cut (i)
        cand = eps & quiet_veto & track & (h < sig_hcal)
        trusted = (sat[i] & ecal_sat) == 0  # identify.ecal_saturated: no ECAL channel
        in_box, in_c = ec < sig_ecal, (ec >= sig_ecal) & (ec < c_ecal)
        signal += cand & trusted & in_box
        side_c += cand & trusted & in_c
        sat_box += cand & ~trusted & in_box
        sat_c += cand & ~trusted & in_c
        dimu += eps & track & (ec < c_ecal) & (two[k] >= dimu_modules)
        is_muon = ok & ~tag & every[k] & (h <= mu_max)
        muon += is_muon & iso
        hadron += iso & ~tag & ~is_muon & (h >= had_min)
    out[C_PILEUP] += pileup
    out[C_MULT_SUM] += mult_sum
    out[C_ELECTRONS] += electrons
    out[C_VETO_ZERO] += v_zero
    out[C_HCAL_ZERO] += h_zero
    out[C_SIGNAL_BOX] += signal
    out[C_SPECIES + _ELECTRON] += electron
    out[C_SPECIES + _HADRON] += hadron
    out[C_SPECIES + _MUON] += muon
    out[C_NAN] += nan
    out[C_SIDEBAND_C] += side_c
    out[C_DIMUON] += dimu
    out[C_SAT_BOX] += sat_box
    out[C_SAT_C] += sat_c
    out[C_ISOLATED] += alone


@kernel
def _fill_chunk(missing, i0, nb, ie, ih, px, py, h_ecal, hcal_copies, nh, h_plane,
                e_ecal, e_ps, e_hcal, e_veto, e_srd, mult, sat, cond, bits, shadow, dt_prev,
                dt_next):
    # the histogram increments, and the prefetch of the next chunk: this loop waits on its
    # stores anyway, and the hardware prefetcher alone leaves the next chunk's loops waiting
    end = np.uint64(e_ecal.shape[0])
    row = np.uint64(e_hcal.shape[1])
    for k in range(nb):
        i = i0 + k
        p = i + _CHUNK  # one cache line of each array when its events reach a new line
        if p < end:
            if p % _U4 == 0:
                for j in range(np.uint64(0), _U4 * row, _U16):
                    prefetch(e_hcal, p * row + j)
            if p % _U16 == 0:
                prefetch(e_ecal, p)
                prefetch(e_ps, p)
                prefetch(e_veto, p)
                prefetch(e_srd, p)
            if p % _U32 == 0:
                prefetch(dt_prev, p)
                prefetch(dt_next, p)
            if p % _U64 == 0:
                prefetch(mult, p)
                prefetch(sat, p)
                prefetch(missing, p)
                prefetch(cond, p)
                prefetch(bits, p)
                prefetch(shadow, p)
        if missing[i] == 0:
            h_ecal[ie[k]] += 1
            hcal_copies[(i % _HCAL_COPIES) * nh + ih[k]] += 1
            h_plane[px[k], py[k]] += 1


@kernel
def _aggregate(e_ecal, e_ps, e_hcal, e_veto, e_srd, mult, p, ntrk, dt_prev, dt_next, sat,
               ecal_sat, missing, cond, bits, shadow, thr, lo, delta, h_ecal, h_hcal, h_plane,
               out, hcal_out):
    # Add the counts of one slice to `out` (slots C_*) and its complete events to the
    # spectra's flow views h_*; their E_HCAL (float32) is left in hcal_out[:complete].
    n = e_hcal.shape[0]
    ne, nh = np.uint64(h_ecal.shape[0]), np.uint64(h_hcal.shape[0])
    n_ecal, n_hcal = ne - _U2, nh - _U2
    n_px, n_py = np.uint64(h_plane.shape[0]) - _U2, np.uint64(h_plane.shape[1]) - _U2
    hcal_copies = np.zeros(_HCAL_COPIES * nh, np.int64)
    every = np.empty(_CHUNK, np.bool_)
    two = np.empty(_CHUNK, np.uint8)
    ie, ih = np.empty(_CHUNK, np.uint32), np.empty(_CHUNK, np.uint32)
    px, py = np.empty(_CHUNK, np.uint32), np.empty(_CHUNK, np.uint32)
    c_missing, c_cond = np.zeros(9, np.int64), np.zeros(9, np.int64)
    c_bits, c_shadow = np.zeros(9, np.int64), np.zeros(9, np.int64)
    end = np.uint64(n)
    i0 = np.uint64(0)
    while i0 < end:
        nb = min(_CHUNK, end - i0)
        i1 = i0 + nb
        _bit_counts(missing[i0:i1], c_missing)
        _bit_counts(cond[i0:i1], c_cond)
        _bit_counts(bits[i0:i1], c_bits)
        _bit_counts(shadow[i0:i1], c_shadow)
        eh = hcal_out[i0:i1]  # every event's E_HCAL in place; incomplete ones dropped below
        _hcal_chunk(e_hcal, i0, nb, thr, eh, every, two)
        _bins_chunk(e_ecal, eh, i0, nb, lo, delta, n_ecal, n_hcal, n_px, n_py, ie, ih, px, py)
        _physics_chunk(e_ecal, e_ps, e_veto, e_srd, mult, p, ntrk, dt_prev, dt_next, missing,
                       sat, ecal_sat, thr, i0, nb, eh, every, two, out)
        _fill_chunk(missing, i0, nb, ie, ih, px, py, h_ecal, hcal_copies, nh, h_plane,
                    e_ecal, e_ps, e_hcal, e_veto, e_srd, mult, sat, cond, bits, shadow,
                    dt_prev, dt_next)
        i0 = i1
    for q in range(_HCAL_COPIES):
        for j in range(nh):
            h_hcal[j] += hcal_copies[q * nh + j]
    if c_missing[8] > 0:  # pack the complete events' E_HCAL (rare: a board was missing)
        filled = 0
        for i in range(n):
            if missing[i] == 0:
                hcal_out[filled] = hcal_out[i]
                filled += 1
    out[C_INCOMPLETE] += c_missing[8]
    out[C_BEAM_COND] += c_cond[_BEAM]
    out[C_ACCEPTED] += c_bits[8]
    for bit in range(4):
        out[C_TRIGGERS + bit] += c_bits[bit]
        out[C_SHADOW + bit] += c_shadow[bit]
    for bit in range(8):
        out[C_MISSING + bit] += c_missing[bit]


def _thresholds(cfg: MonitorConfig, *, track: bool) -> np.ndarray:
    """The cuts as float32: NumPy compares a float32 array with a Python float in float32.
    Without the spectrometer (`track` false) its cuts pass every event."""
    p_min, p_max, trk = ((cfg.signal_p_min_gev, cfg.signal_p_max_gev, cfg.signal_max_tracks)
                         if track else (-np.inf, np.inf, np.inf))
    return np.array([cfg.srd_min_gev, cfg.srd_max_gev, cfg.ps_min_gev,
                     cfg.ecal_min_ratio * cfg.beam_energy_gev, cfg.veto_zero_gev,
                     cfg.hcal_zero_gev, cfg.muon_module_min_gev, cfg.muon_hcal_max_gev,
                     cfg.hadron_hcal_min_gev, cfg.signal_ecal_max_gev, cfg.signal_hcal_max_gev,
                     p_min, p_max, trk, cfg.trigger_ecal_max_gev, cfg.dimuon_module_min_gev,
                     cfg.dimuon_module_max_gev, cfg.dimuon_min_modules,
                     cfg.isolation_before_ns, cfg.isolation_after_ns], np.float32)


def _ro(a: np.ndarray) -> np.ndarray:
    # one numba type whatever the wire gave (read-only buffers, or writable arrays made
    # here or in tests): one compiled specialisation, warmed up at service start
    v = np.ascontiguousarray(a).view()
    v.flags.writeable = False
    return v


def aggregate(f: Mapping[str, np.ndarray], cfg: MonitorConfig, boards: Sequence[str],
              spectra: Spectra) -> Counts:
    """Counts of one features block (checked: `aggregate.check_features`); its complete
    events filled into `spectra` (the kernel adds to the histograms' storage through their
    `view(flow=True)`). Same results as `monitors.reference.aggregate`."""
    e_ecal, missing = _ro(f["e_ecal"]), _ro(f["missing"])
    n = e_ecal.shape[0]
    out = np.zeros(N_COUNTS, np.int64)
    hcal = np.empty(n, np.float32)
    lo, hi = spectrum_range(cfg)  # the range of every axis of `spectra` (Spectra.empty)
    track = has_track(f)
    p = _ro(f["p"]) if track else _ro(np.zeros(n, np.float32))  # (cuts that pass every event)
    ntrk = _ro(f["ntrk"]) if track else _ro(np.zeros(n, np.uint8))
    if has_timing(f):
        dt_prev, dt_next = _ro(f["dt_prev"]), _ro(f["dt_next"])
    else:  # every event isolated (identify.isolated)
        dt_prev = dt_next = _ro(np.full(n, _ALONE))
    _aggregate(e_ecal, _ro(f["e_ps"]), _ro(f["e_hcal"]), _ro(f["e_veto"]), _ro(f["e_srd"]),
               _ro(f["mult"]), p, ntrk, dt_prev, dt_next, _ro(f["sat"]),
               np.uint8(ecal_sat_bit(boards)), missing, _ro(f["cond"]), _ro(f["bits"]),
               _ro(f["shadow"]), _thresholds(cfg, track=track), lo, hi - lo,
               spectra.ecal.view(flow=True), spectra.hcal.view(flow=True),
               spectra.plane.view(flow=True), out, hcal)
    incomplete = int(out[C_INCOMPLETE])
    species = out[C_SPECIES:C_SPECIES + 4].copy()
    isolated = int(out[C_ISOLATED])
    species[3] = isolated - int(species[:3].sum())  # other: isolated, none of those
    c = Counts(events=n, complete=n - incomplete, incomplete=incomplete,
               beam_cond=int(out[C_BEAM_COND]), accepted=int(out[C_ACCEPTED]),
               pileup=int(out[C_PILEUP]), mult_sum=int(out[C_MULT_SUM]),
               electrons=int(out[C_ELECTRONS]), veto_zero=int(out[C_VETO_ZERO]),
               hcal_zero=int(out[C_HCAL_ZERO]), signal_box=int(out[C_SIGNAL_BOX]),
               sideband_c=int(out[C_SIDEBAND_C]), dimuons=int(out[C_DIMUON]),
               saturated_box=int(out[C_SAT_BOX]), saturated_c=int(out[C_SAT_C]),
               isolated=isolated,
               untracked=0 if track else n - incomplete,
               triggers=out[C_TRIGGERS:C_TRIGGERS + 4].copy(),
               shadow=out[C_SHADOW:C_SHADOW + 4].copy(), species=species)
    # a board beyond bit 7 cannot be flagged missing in the uint8 `missing`
    c.missing_board = {b: int(out[C_MISSING + i]) if i < 8 else 0
                       for i, b in enumerate(boards)}
    # np.nansum is np.sum once NaN are replaced by 0: without NaN, skip its search for them
    total = np.sum if out[C_NAN] == 0 else np.nansum
    spectra.ecal_sum += float(total(e_ecal if incomplete == 0 else e_ecal[missing == 0],
                                    dtype=np.float64))
    spectra.hcal_sum += float(total(hcal[:c.complete], dtype=np.float64))
    return c


def warm_up(cfg: MonitorConfig | None = None) -> None:
    """Compile (or load from the cache) the kernel before the first slice arrives."""
    cfg = cfg or MonitorConfig()
    f32, u8 = np.zeros(1, np.float32), np.zeros(1, np.uint8)
    block: dict[str, np.ndarray] = {
        "e_ecal": f32, "e_ps": f32, "e_hcal": np.zeros((1, 4), np.float32), "e_veto": f32,
        "e_srd": f32, "mult": u8, "sat": u8, "missing": u8, "cond": u8, "bits": u8,
        "shadow": u8}
    aggregate(block, cfg, (), Spectra.empty(cfg))
    aggregate({**block, "p": f32, "ntrk": u8}, cfg, (), Spectra.empty(cfg))
    u16 = np.zeros(1, np.uint16)
    aggregate({**block, "dt_prev": u16, "dt_next": u16}, cfg, (), Spectra.empty(cfg))
