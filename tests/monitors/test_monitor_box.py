"""The signal box against the physics trigger: one E_PS cut, so the box keeps what it kept."""

from __future__ import annotations

from monitors.config import MonitorConfig
from monitors.identify import signal_box
from tests.trigger.trigger_data import built_arrays, detector, sim_slices
from trigger.config import PHYSICS, PS_MIN_GEV, TriggerConfig
from trigger.core import build_params, compute_features, decide


def test_one_e_ps_threshold_for_trigger_and_monitors() -> None:
    assert MonitorConfig().ps_min_gev == TriggerConfig().ps_min_gev == PS_MIN_GEV


def test_box_keeps_the_injected_signal_the_trigger_kept() -> None:
    """Injected A' (1 % of electrons, default intensity) with a true E_ECAL below the box
    edge, nothing else in any gate: every one the physics trigger kept and the SRD tags is
    in the box: 149 of 149 (with the monitors' former 0.3 GeV E_PS cut, 138)."""
    geom, cal = detector()
    tcfg, mcfg = TriggerConfig(), MonitorConfig()
    p = build_params(tcfg, geom, cal)
    kept = in_box = 0
    for s in sim_slices("feature", seed=12, generated_s=0.02, signal_rate=0.01):
        f = compute_features(built_arrays(s), s.count, "feature", p)
        _, bits = decide(f, p, run=1, spill=s.spill, first=s.first)
        t = s.truth
        cols = f.arrays()
        clean = (t["signal"] & (t["pileup"].max(axis=1) == 0) & ~t["v1"]
                 & (t["e_ecal"] < mcfg.signal_ecal_max_gev - 5)
                 & (cols["e_srd"] >= mcfg.srd_min_gev) & (cols["e_srd"] <= mcfg.srd_max_gev))
        phys = (bits & PHYSICS) != 0
        box = signal_box(cols, mcfg)
        kept += int((clean & phys).sum())
        in_box += int((clean & phys & box).sum())
    assert kept > 100, kept
    assert in_box == kept, (in_box, kept)
