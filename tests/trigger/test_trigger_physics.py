"""The physics trigger on simulator data with the invisible signal injected."""

from __future__ import annotations

import numpy as np
import pytest
from trigger_data import built_arrays, detector, sim_slices, zero_suppress

from trigger.config import PHYSICS, TriggerConfig
from trigger.core import build_params, compute_features, decide

GEOM, CAL = detector()


@pytest.mark.parametrize(("mode", "generated_s", "suppress"),
                         [("feature", 0.04, False), ("waveform", 0.012, False),
                          ("waveform", 0.012, True)])
def test_physics_trigger_keeps_signal_and_rejects_electrons(mode: str, generated_s: float,
                                                            suppress: bool) -> None:
    cfg = TriggerConfig()
    p = build_params(cfg, GEOM, CAL)
    sig = sig_kept = clean = clean_kept = el = el_kept = events = accepted = 0
    slices = list(sim_slices(mode, seed=11, generated_s=generated_s, signal_rate=0.01))
    # alone in every trace: no other beam particle within 400 ns (the ECAL's and beam
    # counters' traces reach ~300 ns either way; the halo reaches only VETO and HCAL)
    t_all = np.concatenate([s.truth["t_ns"] for s in slices])
    gap = np.diff(t_all)
    alone = np.minimum(np.r_[np.inf, gap], np.r_[gap, np.inf]) >= 400.0
    for s in slices:
        arrays = built_arrays(s)
        if suppress:  # zero-suppressed waveforms, as the digitisers send them
            arrays = zero_suppress(arrays, s.count)
        f = compute_features(arrays, s.count, mode, p)
        _, bits = decide(f, p, run=1, spill=s.spill, first=s.first)
        phys = (bits & PHYSICS) != 0
        t = s.truth
        signal = t["signal"] & (t["e_ecal"] < cfg.ecal_max_gev)
        # the events the trigger must keep: in-time ECAL energy below the cut by more than
        # 5 sigma of the resolution, an unambiguous preshower signal, no other beam particle
        # in any trace and no halo in V1 (pileup and V1 are what the trigger reacts to)
        sigma = np.sqrt(0.1**2 * t["e_ecal"] + (0.01 * t["e_ecal"]) ** 2)
        ok = (signal & (t["e_ecal"] + 5 * sigma < cfg.ecal_max_gev)
              & (t["e_ps"] >= 3 * cfg.ps_min_gev) & alone[s.first:s.first + s.count]
              & ~t["v1"])
        electrons = (t["species"] == 0) & (t["process"] == 0) & (t["e_true"] > 95.0)
        sig += int(signal.sum())
        sig_kept += int((signal & phys).sum())
        clean += int(ok.sum())
        clean_kept += int((ok & phys).sum())
        el += int(electrons.sum())
        el_kept += int((electrons & phys).sum())
        events += s.count
        accepted += int(np.count_nonzero(bits))
    assert clean > 40, "too few clean signal events for the test to mean anything"
    assert clean_kept == clean
    assert el > 5000
    assert el_kept <= 0.01 * el
    # the accept rate of one spill, reported; the whole trigger keeps a small fraction
    rate = accepted / events
    print(f"{mode}: signal kept {sig_kept}/{sig}, clean {clean_kept}/{clean}, "
          f"electrons kept {el_kept}/{el}, accept rate {rate:.4f} of {events} events")
    assert sig_kept > 0.7 * sig
    assert rate < 0.05
