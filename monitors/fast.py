"""The monitors' per-block counts in one compiled pass (twin: count_features_numpy).

At beam rate the monitor sees every event; the NumPy version makes ~20 passes over a block,
this makes one. Thresholds are compared in float32, as NumPy compares a float32 array with a
Python float (NEP 50), so that both give the same counts.
"""

from __future__ import annotations

import numba
import numpy as np

from monitors.config import MonitorConfig

# slots of the int64 output
COMPLETE, BEAM_COND, ACCEPTED, TRIGGERS, SHADOW = 0, 1, 2, 3, 7
PILEUP, MULT_SUM, ELECTRONS, VETO_ZERO, HCAL_ZERO, SPECIES, SIGNAL_BOX, MISSING = (
    11, 12, 13, 14, 15, 16, 20, 21)
# thresholds (float32 array)
(T_SRD_MIN, T_SRD_MAX, T_PS_MIN, T_ECAL_MIN, T_MU_MODULE, T_MU_HCAL_MAX, T_HAD_MIN,
 T_VETO_ZERO, T_HCAL_ZERO, T_SIG_ECAL, T_SIG_HCAL) = range(11)
BEAM = 2  # the beam condition's bit (monitors.summary.BEAM_BIT)
ELECTRON, HADRON, MUON, OTHER = 0, 1, 2, 3  # monitors.identify.Species


def thresholds(cfg: MonitorConfig) -> np.ndarray:
    return np.array([cfg.srd_min_gev, cfg.srd_max_gev, cfg.ps_min_gev,
                     cfg.ecal_min_ratio * cfg.beam_energy_gev, cfg.muon_module_min_gev,
                     cfg.muon_hcal_max_gev, cfg.hadron_hcal_min_gev, cfg.veto_zero_gev,
                     cfg.hcal_zero_gev, cfg.signal_ecal_max_gev, cfg.signal_hcal_max_gev],
                    np.float32)


@numba.njit(cache=True, nogil=True)
def count_block(e_ecal, e_ps, e_hcal, e_veto, e_srd, mult, missing, cond, bits, shadow,
                thr, nboards, out, hcal, ok):  # pragma: no cover - compiled
    n = e_ecal.shape[0]
    nmod = e_hcal.shape[1]
    for e in range(n):
        miss = missing[e]
        for i in range(nboards):
            out[MISSING + i] += (miss >> i) & 1
        out[BEAM_COND] += (cond[e] & BEAM) != 0
        b = bits[e]
        s = shadow[e]
        out[ACCEPTED] += b != 0
        for i in range(4):
            out[TRIGGERS + i] += (b >> i) & 1
            out[SHADOW + i] += (s >> i) & 1
        eh = np.float32(0.0)
        every = True
        for m in range(nmod):
            eh += e_hcal[e, m]
            every &= e_hcal[e, m] >= thr[T_MU_MODULE]
        hcal[e] = eh
        ok[e] = miss == 0
        if miss != 0:
            continue
        out[COMPLETE] += 1
        mu = mult[e]
        out[PILEUP] += mu > 1
        out[MULT_SUM] += mu
        tag = (e_srd[e] >= thr[T_SRD_MIN]) & (e_srd[e] <= thr[T_SRD_MAX])
        ps = e_ps[e] >= thr[T_PS_MIN]
        ele = tag & ps & (e_ecal[e] >= thr[T_ECAL_MIN])
        if ele:
            out[ELECTRONS] += 1
            out[VETO_ZERO] += e_veto[e] < thr[T_VETO_ZERO]
            out[HCAL_ZERO] += eh < thr[T_HCAL_ZERO]
        muon = (not tag) & every & (eh <= thr[T_MU_HCAL_MAX])
        species = OTHER
        if tag & ps:
            species = ELECTRON
        elif muon:
            species = MUON
        elif (not tag) & (eh >= thr[T_HAD_MIN]):
            species = HADRON
        out[SPECIES + species] += 1
        out[SIGNAL_BOX] += (tag & ps & (e_ecal[e] < thr[T_SIG_ECAL]) & (eh < thr[T_SIG_HCAL])
                            & (e_veto[e] < thr[T_VETO_ZERO]))


def warm_up() -> None:
    """Compile (or load from the cache) count_block for blocks decoded from the wire."""
    from daq.geometry import BOARD_NAMES
    from monitors.aggregate import count_features

    f32, u8 = np.zeros(1, np.float32), np.zeros(1, np.uint8)
    block: dict[str, np.ndarray] = {
        "e_ecal": f32, "e_ps": f32, "e_hcal": np.zeros((1, 4), np.float32), "e_veto": f32,
        "e_srd": f32, "mult": u8, "missing": u8, "cond": u8, "bits": u8, "shadow": u8}
    for a in block.values():
        a.flags.writeable = False  # arrays decoded from the wire are read-only
    count_features(block, MonitorConfig(), BOARD_NAMES)
