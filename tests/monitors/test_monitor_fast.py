"""The compiled per-block counts equal the NumPy definitions, event class by event class."""

from __future__ import annotations

import numpy as np
import pytest

from daq.geometry import BOARD_NAMES
from monitors.aggregate import count_features, count_features_numpy
from monitors.config import MonitorConfig

CFG = MonitorConfig()


def _block(seed: int, n: int, incomplete: float) -> dict[str, np.ndarray]:
    """Features spread across every cut, with values placed exactly on the thresholds too."""
    rng = np.random.default_rng(seed)
    edges = np.array([CFG.srd_min_gev, CFG.srd_max_gev, CFG.ps_min_gev,
                      CFG.ecal_min_ratio * CFG.beam_energy_gev, CFG.muon_module_min_gev,
                      CFG.muon_hcal_max_gev, CFG.hadron_hcal_min_gev, CFG.veto_zero_gev,
                      CFG.hcal_zero_gev, CFG.signal_ecal_max_gev, CFG.signal_hcal_max_gev],
                     np.float32)

    def col(scale: float, shape: tuple[int, ...] = ()) -> np.ndarray:
        v = (rng.random((n, *shape)) * scale).astype(np.float32)
        on_edge = rng.random((n, *shape)) < 0.2
        v[on_edge] = rng.choice(edges, int(on_edge.sum()))
        return v

    f = {"e_ecal": col(120.0), "e_ps": col(2.0), "e_hcal": col(60.0, (4,)),
         "e_veto": col(0.2), "e_srd": col(0.2)}
    mu = rng.random(n) < 0.1  # muon-like: a MIP or more in every module, no SRD
    f["e_hcal"][mu] = (CFG.muon_module_min_gev
                       + rng.random((int(mu.sum()), 4)) * CFG.muon_module_min_gev)
    f["e_srd"][mu] = 0.0
    sig = ~mu & (rng.random(n) < 0.1)  # signal-like: an electron that left little behind
    k = int(sig.sum())
    f["e_srd"][sig] = (CFG.srd_min_gev + CFG.srd_max_gev) / 2
    f["e_ps"][sig] = CFG.ps_min_gev * 2
    f["e_ecal"][sig] = rng.random(k).astype(np.float32) * CFG.signal_ecal_max_gev
    f["e_hcal"][sig] = 0.0
    f["e_veto"][sig] = 0.0
    missing = np.where(rng.random(n) < incomplete, rng.integers(1, 32, n), 0).astype(np.uint8)
    return {**f, "mult": rng.integers(1, 4, n, dtype=np.uint8),
            "missing": missing, "cond": rng.integers(0, 16, n, dtype=np.uint8),
            "bits": rng.integers(0, 16, n, dtype=np.uint8),
            "shadow": rng.integers(0, 16, n, dtype=np.uint8)}


@pytest.mark.parametrize(("seed", "n", "incomplete"), [(1, 5000, 0.0), (2, 5000, 0.1),
                                                       (3, 1, 0.0), (4, 0, 0.0), (5, 777, 1.0)])
def test_compiled_counts_equal_the_numpy_definitions(seed: int, n: int,
                                                     incomplete: float) -> None:
    f = _block(seed, n, incomplete)
    c, ok, hcal = count_features(f, CFG, BOARD_NAMES)
    r, rok, rhcal = count_features_numpy(f, CFG, BOARD_NAMES)
    for name in ("events", "complete", "incomplete", "beam_cond", "accepted", "pileup",
                 "mult_sum", "electrons", "veto_zero", "hcal_zero", "signal_box"):
        assert getattr(c, name) == getattr(r, name), name
    for name in ("triggers", "shadow", "species"):
        assert np.array_equal(getattr(c, name), getattr(r, name)), name
    assert c.missing_board == r.missing_board
    assert np.array_equal(ok, rok) and np.array_equal(hcal, rhcal)
    if n >= 5000:  # the block reaches every class, so the comparison means something
        assert (c.species > 0).all() and c.electrons > 0 and c.signal_box > 0
