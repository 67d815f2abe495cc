"""Per-event particle identification from features: electron sample and beam composition.

The electron sample of the efficiency measurement uses SRD, E_PS and E_ECAL only: a cut on
VETO or HCAL would bias their efficiencies, and a cut on beam multiplicity would remove the
very pileup that makes them inefficient. Definitions: docs/monitors.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np

from monitors.config import MonitorConfig

#: features arrays the monitors read (docs/dataflow.md, "Features").
FEATURE_ARRAYS = {
    "e_ecal": ("<f4", 1), "e_ps": ("<f4", 1), "e_hcal": ("<f4", 2), "e_veto": ("<f4", 1),
    "e_srd": ("<f4", 1), "mult": ("|u1", 1), "missing": ("|u1", 1), "cond": ("|u1", 1),
    "bits": ("|u1", 1), "shadow": ("|u1", 1),
}


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
    which halo pileup does not reach) and no shower. Nothing on the ECAL: its 100 ns gate
    holds a neighbour's shower for one muon in eight at 6e6 e-/spill;
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


def signal_box(f: Mapping[str, np.ndarray], cfg: MonitorConfig, *,
               tag: np.ndarray | None = None, hcal: np.ndarray | None = None) -> np.ndarray:
    """Missing-energy candidates: identified electron (SRD, PS) with little E_ECAL and E_HCAL.

    `tag` (srd_tagged) and `hcal` (hcal_total), when given, are used instead of computed.
    """
    tag = srd_tagged(f, cfg) if tag is None else tag
    eh = hcal_total(f) if hcal is None else hcal
    return (tag & (f["e_ps"] >= cfg.ps_min_gev)
            & (f["e_ecal"] < cfg.signal_ecal_max_gev)
            & (eh < cfg.signal_hcal_max_gev)
            & (f["e_veto"] < cfg.veto_zero_gev))
