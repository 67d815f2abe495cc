"""Per-event particle identification from features: electron sample and beam composition.

The electron sample of the efficiency measurement uses SRD, E_PS and E_ECAL only: a cut on
VETO or HCAL would bias their efficiencies, and a cut on beam multiplicity would remove the
very pileup that makes them inefficient. The signal box, sideband C and the dimuons are
defined here once, for the monitors, `na64daq analyze` and the shift page. Definitions:
docs/monitors.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import numpy as np

from daq.geometry import BOARD_NAMES
from monitors.config import MonitorConfig

#: features arrays the monitors read (docs/dataflow.md, "Features").
FEATURE_ARRAYS = {
    "e_ecal": ("<f4", 1), "e_ps": ("<f4", 1), "e_hcal": ("<f4", 2), "e_veto": ("<f4", 1),
    "e_srd": ("<f4", 1), "mult": ("|u1", 1), "sat": ("|u1", 1), "missing": ("|u1", 1),
    "cond": ("|u1", 1), "bits": ("|u1", 1), "shadow": ("|u1", 1),
}
#: the spectrometer's features, absent from streams recorded before it existed: without
#: them no momentum or track cut can be made (`has_track`).
TRACK_ARRAYS = {"p": ("<f4", 1), "ntrk": ("|u1", 1)}


#: the trigger's past-future protection (trigger.core.neighbour_gaps): ns to the previous
#: and the next event of the built slice, 0 when unknown; absent from streams recorded
#: before it, whose composition counts every event (`isolated`)
TIMING_ARRAYS = {"dt_prev": ("<u2", 1), "dt_next": ("<u2", 1)}


class Species(enum.IntEnum):
    """What the monitors call a beam particle (not the simulator's truth enum)."""

    ELECTRON = 0
    HADRON = 1
    MUON = 2
    OTHER = 3


SPECIES_NAMES = tuple(s.name.lower() for s in Species)


def srd_tagged(f: Mapping[str, np.ndarray], cfg: MonitorConfig) -> np.ndarray:
    """SRD in the electron range: synchrotron radiation of a 100 GeV electron."""
    e = f["e_srd"]
    return (e >= cfg.srd_min_gev) & (e <= cfg.srd_max_gev)


def has_timing(f: Mapping[str, np.ndarray]) -> bool:
    """Whether the features carry the trigger's neighbour gaps (TIMING_ARRAYS)."""
    return "dt_prev" in f and "dt_next" in f


def isolated(f: Mapping[str, np.ndarray], cfg: MonitorConfig) -> np.ndarray:
    """Events that no other beam event came near: none from `isolation_before_ns` before to
    `isolation_after_ns` after (a gap of 0, at a slice's ends, is unknown: not isolated).
    No other electron's SRD pulse reaches their SRD window, so their SRD tag is their own:
    the beam composition is counted on them. Whether an event is isolated does not depend
    on its species (the beam is Poisson), so the fractions stay unbiased. Every event is
    isolated in features without the gaps (a stream from before them)."""
    if not has_timing(f):
        return np.ones(len(f["e_ecal"]), bool)
    return (f["dt_prev"] > cfg.isolation_before_ns) & (f["dt_next"] > cfg.isolation_after_ns)


def electron_sample(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
                    tag: np.ndarray | None = None) -> np.ndarray:
    """Identified electrons: SRD-tagged, shower starting in the preshower, most energy in ECAL.

    No upper cut on E_ECAL and nothing on VETO, HCAL or multiplicity (see module docstring).
    """
    tag = srd_tagged(f, cfg) if tag is None else tag
    return tag & (f["e_ps"] >= cfg.ps_min_gev) & (
        f["e_ecal"] >= cfg.ecal_min_ratio * cfg.beam_energy_gev)


def hcal_total(f: Mapping[str, np.ndarray]) -> np.ndarray:
    """E_HCAL summed over the modules in module order (float32), GeV."""
    # column by column: a reduction along the short module axis costs ~10x more
    e = f["e_hcal"]
    out = e[:, 0].astype(np.float32)
    for j in range(1, e.shape[1]):
        out += e[:, j]
    return out


def _every_module(e_hcal: np.ndarray, threshold: float) -> np.ndarray:
    """Events with at least `threshold` GeV in every HCAL module."""
    out = e_hcal[:, 0] >= threshold
    for j in range(1, e_hcal.shape[1]):
        out &= e_hcal[:, j] >= threshold
    return out


def classify(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
             tag: np.ndarray | None = None, hcal: np.ndarray | None = None) -> np.ndarray:
    """Species code (uint8, values of `Species`) per event.

    electron: SRD-tagged and an electromagnetic shower start in the preshower;
    muon: no SRD, a MIP or more in every HCAL module (including the zero-degree HCAL4,
    which halo pileup does not reach) and no shower. Nothing on the ECAL: its 100 ns window
    holds a neighbour's shower (or its tail) for many muons at 6e6 e-/spill;
    hadron: no SRD, not a muon, E_HCAL above the hadron threshold; other: the rest.
    """
    n = len(f["e_ecal"])
    out = np.full(n, Species.OTHER, np.uint8)
    tag = srd_tagged(f, cfg) if tag is None else tag
    eh = hcal_total(f) if hcal is None else hcal
    every_module = _every_module(f["e_hcal"], cfg.muon_module_min_gev)
    muon = ~tag & every_module & (eh <= cfg.muon_hcal_max_gev)
    hadron = ~tag & ~muon & (eh >= cfg.hadron_hcal_min_gev)
    out[hadron] = Species.HADRON
    out[muon] = Species.MUON
    out[tag & (f["e_ps"] >= cfg.ps_min_gev)] = Species.ELECTRON
    return out


def has_track(f: Mapping[str, np.ndarray]) -> bool:
    """Whether the features carry the spectrometer's momentum and track count."""
    return "p" in f and "ntrk" in f


def single_track_in_window(f: Mapping[str, np.ndarray], cfg: MonitorConfig) -> np.ndarray:
    """Paper cut (i): one track (at most `signal_max_tracks`) of momentum within the
    window; every event passes when the features have no spectrometer (`has_track`)."""
    if not has_track(f):
        return np.ones(len(f["e_ecal"]), bool)
    p = f["p"]
    return ((p >= cfg.signal_p_min_gev) & (p <= cfg.signal_p_max_gev)
            & (f["ntrk"] <= cfg.signal_max_tracks))


def ecal_sat_bit(boards: Sequence[str] = BOARD_NAMES) -> int:
    """The ECAL's bit in `sat` (bit i: board i of the geometry, as in `missing`); 0 when
    no ECAL is among the first eight boards (the mask is uint8)."""
    i = list(boards).index("ECAL") if "ECAL" in boards else 8
    return 1 << i if i < 8 else 0


def ecal_saturated(f: Mapping[str, np.ndarray],
                   boards: Sequence[str] = BOARD_NAMES) -> np.ndarray:
    """Events with an ECAL channel saturated (the ECAL bit of `sat`): their E_ECAL reads
    low by what the cell could not count, so a full-energy electron can land in C or in
    the box (docs/monitors.md, "Signal box, sideband C and dimuons at 6e6 e-/spill")."""
    return (f["sat"] & np.uint8(ecal_sat_bit(boards))) != 0


def _candidate(f: Mapping[str, np.ndarray], cfg: MonitorConfig,
               tag: np.ndarray | None) -> np.ndarray:
    tag = srd_tagged(f, cfg) if tag is None else tag
    return (tag & (f["e_ps"] >= cfg.ps_min_gev) & (f["e_veto"] < cfg.veto_zero_gev)
            & single_track_in_window(f, cfg))


def box_candidate(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
                  tag: np.ndarray | None = None,
                  boards: Sequence[str] = BOARD_NAMES) -> np.ndarray:
    """The signal box's cuts but those on E_ECAL and E_HCAL: one incoming electron of the
    beam's momentum (spectrometer), SRD-tagged, its shower starting in the preshower (the
    physics trigger's E_PS cut), nothing in the VETO, and an E_ECAL that can be trusted
    (no ECAL channel saturated: `ecal_saturated`)."""
    return _candidate(f, cfg, tag) & ~ecal_saturated(f, boards)


def _in_box(e_ecal: np.ndarray, e_hcal: np.ndarray, cfg: MonitorConfig) -> np.ndarray:
    return (e_ecal < cfg.signal_ecal_max_gev) & (e_hcal < cfg.signal_hcal_max_gev)


def _in_c(e_ecal: np.ndarray, e_hcal: np.ndarray, cfg: MonitorConfig) -> np.ndarray:
    return ((e_ecal >= cfg.signal_ecal_max_gev) & (e_ecal < cfg.trigger_ecal_max_gev)
            & (e_hcal < cfg.signal_hcal_max_gev))


def regions(cfg: MonitorConfig) -> dict[str, dict[str, float]]:
    """The signal box and sideband C in the E_ECAL-E_HCAL plane, GeV (lo inclusive, hi
    exclusive): {name: {ecal_lo, ecal_hi, hcal_lo, hcal_hi}}. C is the paper's low-E_HCAL
    band above the box (E_ECAL >= the box's edge), up to the physics trigger's E_ECAL cut."""
    return {
        "signal": {"ecal_lo": 0.0, "ecal_hi": cfg.signal_ecal_max_gev,
                   "hcal_lo": 0.0, "hcal_hi": cfg.signal_hcal_max_gev},
        "C": {"ecal_lo": cfg.signal_ecal_max_gev, "ecal_hi": cfg.trigger_ecal_max_gev,
              "hcal_lo": 0.0, "hcal_hi": cfg.signal_hcal_max_gev},
    }


def signal_box(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
               tag: np.ndarray | None = None, hcal: np.ndarray | None = None,
               boards: Sequence[str] = BOARD_NAMES) -> np.ndarray:
    """Missing-energy candidates: a box candidate with little E_ECAL and E_HCAL.

    `tag` (srd_tagged) and `hcal` (hcal_total), when given, are used instead of computed.
    """
    eh = hcal_total(f) if hcal is None else hcal
    return box_candidate(f, cfg, tag=tag, boards=boards) & _in_box(f["e_ecal"], eh, cfg)


def sideband_c(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
               tag: np.ndarray | None = None, hcal: np.ndarray | None = None,
               boards: Sequence[str] = BOARD_NAMES) -> np.ndarray:
    """Sideband C: a box candidate in the `regions` C rectangle (E_ECAL from the box's edge
    to the physics trigger's cut, E_HCAL in the box's range)."""
    eh = hcal_total(f) if hcal is None else hcal
    return box_candidate(f, cfg, tag=tag, boards=boards) & _in_c(f["e_ecal"], eh, cfg)


def saturated_candidates(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
                         tag: np.ndarray | None = None, hcal: np.ndarray | None = None,
                         boards: Sequence[str] = BOARD_NAMES) -> dict[str, np.ndarray]:
    """What the saturation cut takes out of the box and of C: the events that pass every
    other cut of `signal_box` ("signal") or `sideband_c` ("C") but whose ECAL saturated."""
    eh = hcal_total(f) if hcal is None else hcal
    out = _candidate(f, cfg, tag) & ecal_saturated(f, boards)
    return {"signal": out & _in_box(f["e_ecal"], eh, cfg), "C": out & _in_c(f["e_ecal"], eh, cfg)}


def dimuon(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
           tag: np.ndarray | None = None) -> np.ndarray:
    """e Z -> e Z mu+ mu-: an incoming electron of the beam's momentum (SRD, E_PS,
    spectrometer) below the physics trigger's E_ECAL cut, and two MIPs (2 x ~2 GeV) in at
    least `dimuon_min_modules` HCAL modules. Nothing on the VETO, which the pair crosses."""
    tag = srd_tagged(f, cfg) if tag is None else tag
    e = f["e_hcal"]
    two = np.zeros(len(e), np.int64)
    for j in range(e.shape[1]):
        two += (e[:, j] >= cfg.dimuon_module_min_gev) & (e[:, j] <= cfg.dimuon_module_max_gev)
    return (tag & (f["e_ps"] >= cfg.ps_min_gev) & single_track_in_window(f, cfg)
            & (f["e_ecal"] < cfg.trigger_ecal_max_gev) & (two >= cfg.dimuon_min_modules))
