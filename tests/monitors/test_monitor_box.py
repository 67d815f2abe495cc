"""The signal box against the physics trigger: one E_PS cut, so the box keeps what it kept."""

from __future__ import annotations

import numpy as np
from monitor_synth import spill_messages
from prometheus_client import CollectorRegistry

from daq.geometry import BOARD_NAMES
from daq.wire import Kind, Message
from monitors.aggregate import RunAnalysis
from monitors.config import MonitorConfig
from monitors.identify import ecal_sat_bit, signal_box
from monitors.metrics import MonitorMetrics
from monitors.summary import SpillSummary
from tests import pileup_truth as pt
from tests.trigger.trigger_data import built_arrays, detector, sim_slices
from trigger.config import PHYSICS, PS_MIN_GEV, TriggerConfig
from trigger.core import build_params, compute_features, decide


def test_one_e_ps_threshold_for_trigger_and_monitors() -> None:
    assert MonitorConfig().ps_min_gev == TriggerConfig().ps_min_gev == PS_MIN_GEV


def test_box_keeps_the_injected_signal_the_trigger_kept() -> None:
    """Injected A' (1 % of electrons, default intensity) with a true E_ECAL below the box
    edge, nothing else in any trace: every one the physics trigger kept and the SRD tags is
    in the box: 149 of 149 (with the monitors' former 0.3 GeV E_PS cut, 138)."""
    geom, cal = detector()
    tcfg, mcfg = TriggerConfig(), MonitorConfig()
    p = build_params(tcfg, geom, cal)
    kept = in_box = 0
    slices = list(sim_slices("feature", seed=12, generated_s=0.02, signal_rate=0.01))
    alone = pt.alone_in_windows(geom, {k: np.concatenate([s.truth[k] for s in slices])
                                       for k in ("t_ns", "halo_dt")})
    for s in slices:
        f = compute_features(built_arrays(s), s.count, "feature", p)
        _, bits = decide(f, p, run=1, spill=s.spill, first=s.first)
        t = s.truth
        cols = f.arrays()
        clean = (t["signal"] & alone[s.first:s.first + s.count] & ~t["v1"]
                 & (t["e_ecal"] < mcfg.signal_ecal_max_gev - 5)
                 & (cols["e_srd"] >= mcfg.srd_min_gev) & (cols["e_srd"] <= mcfg.srd_max_gev))
        phys = (bits & PHYSICS) != 0
        box = signal_box(cols, mcfg)
        kept += int((clean & phys).sum())
        in_box += int((clean & phys & box).sum())
    assert kept > 100, kept
    assert in_box == kept, (in_box, kept)


def _without_spectrometer(arrays: dict[str, np.ndarray], count: int, beam: list[str]
                          ) -> dict[str, np.ndarray]:
    """A feature-mode built slice as a BEAM board from before the spectrometer sent it:
    only the counters' hits (S1-S3, V1)."""
    nhit = arrays["BEAM.nhit"]
    keep = np.isin(arrays["BEAM.hit_ch"], [beam.index(c) for c in ("S1", "S2", "S3", "V1")])
    event = np.repeat(np.arange(count), nhit)
    out = dict(arrays)
    out["BEAM.nhit"] = np.bincount(event[keep], minlength=count).astype(np.uint8)
    for k in ("hit_ch", "hit_amp", "hit_t", "hit_np"):
        out[f"BEAM.{k}"] = arrays[f"BEAM.{k}"][keep]
    return out


def test_a_stream_from_before_the_spectrometer_has_no_momentum_to_cut_on() -> None:
    """Its slices carry no p/ntrk (not zeros, which would empty the box): the monitors count
    the events as untracked and make no cut (i); the same slice with the spectrometer has
    them, and the box cuts on them."""
    geom, cal = detector()
    p = build_params(TriggerConfig(), geom, cal)
    beam = [c.name for c in geom.board("BEAM").channels]
    mcfg = MonitorConfig(blind=False)
    s = next(iter(sim_slices("feature", seed=12, generated_s=0.005, signal_rate=0.05)))
    new = compute_features(built_arrays(s), s.count, "feature", p).arrays()
    old = compute_features(_without_spectrometer(built_arrays(s), s.count, beam), s.count,
                           "feature", p).arrays()
    assert "p" in new and "ntrk" in new and (new["ntrk"] >= 1).all()
    assert "p" not in old and "ntrk" not in old
    for k in ("e_ecal", "e_hcal", "mult"):
        np.testing.assert_array_equal(old[k], new[k])
    extra = {"missing": np.zeros(s.count, np.uint8), "cond": np.zeros(s.count, np.uint8),
             "bits": np.zeros(s.count, np.uint8), "shadow": np.zeros(s.count, np.uint8)}
    counts = {}
    for name, cols in (("old", old), ("new", new)):
        msg = Message(Kind.FEATURES, run=1, spill=1, count=s.count, arrays={**cols, **extra},
                      meta={"slice_index": 0})
        ra = RunAnalysis(mcfg)
        ra.feed(msg)
        ra.finish()
        counts[name] = ra.totals()
    assert counts["old"].untracked_events == s.count and counts["new"].untracked_events == 0
    wide = mcfg.model_copy(update={"signal_p_min_gev": 0.0, "signal_p_max_gev": 1000.0,
                                   "signal_max_tracks": 255})
    assert counts["old"].signal_box == int(signal_box(new, wide).sum()) > 0
    assert counts["new"].signal_box == int(signal_box(new, mcfg).sum())


def _candidates_with_saturation(blind: bool) -> tuple[SpillSummary, SpillSummary]:
    """One synthetic spill (monitor_synth: electrons at 100 GeV, hadrons, muons: nothing in
    the box or in C) in which six electrons left little in VETO and HCAL and read a low
    E_ECAL, as when the preshower's spot cell saturates (docs/monitors.md): two in C and
    one in the box with the ECAL bit of `sat`, one in C with another board's bit, one in C
    and one in the box unsaturated. The spill's closed summary and that of the same spill
    with `sat` cleared."""
    rng = np.random.default_rng(3)
    msgs, _ = spill_messages(rng, slices=2, slice_events=1000)
    f = msgs[0].arrays
    k = np.arange(6)
    f["e_srd"][k], f["e_ps"][k], f["e_veto"][k], f["e_hcal"][k] = 0.02, 10.0, 0.0, 0.0
    f["e_ecal"][k] = [70.0, 85.0, 30.0, 60.0, 75.0, 20.0]
    ecal, hcal = ecal_sat_bit(), 1 << BOARD_NAMES.index("HCAL")
    sat = np.array([ecal, ecal | hcal, ecal, hcal, 0, 0], np.uint8)
    f["sat"][k] = sat
    out = []
    for arrays in (f, {**f, "sat": np.zeros_like(f["sat"])}):
        m = msgs[0]
        first = Message(m.kind, m.run, m.spill, m.seq, m.src, m.board, m.first, m.count,
                        arrays, m.meta)
        ra = RunAnalysis(MonitorConfig(blind=blind))
        (s,) = [s for msg in [first, *msgs[1:]] for s in ra.feed(msg)]
        out.append(s)
    return out[0], out[1]


def test_a_saturated_ecal_is_neither_in_the_box_nor_in_c_and_is_counted() -> None:
    s, cleared = _candidates_with_saturation(blind=False)
    assert (cleared.signal_box, cleared.sideband_c) == (2, 4)  # every candidate without sat
    assert (s.signal_box, s.sideband_c) == (1, 2)  # the ECAL bit only takes them out
    assert s.ecal_saturated == {"signal": 1, "C": 2}
    assert cleared.ecal_saturated == {"signal": 0, "C": 0}
    reg = CollectorRegistry()
    MonitorMetrics(reg, MonitorConfig(blind=False)).on_spill(s, None, now=1.0)
    name = "na64_ecal_saturated_events"
    assert reg.get_sample_value(name, {"source": "live", "region": "C"}) == 2
    assert reg.get_sample_value(name, {"source": "live", "region": "signal"}) == 1


def test_the_box_saturated_count_is_withheld_when_blind() -> None:
    s, _ = _candidates_with_saturation(blind=True)
    assert s.signal_box is None and s.sideband_c == 2
    assert s.ecal_saturated == {"signal": None, "C": 2}
    reg = CollectorRegistry()
    MonitorMetrics(reg, MonitorConfig()).on_spill(s, None, now=1.0)
    name = "na64_ecal_saturated_events"
    assert reg.get_sample_value(name, {"source": "live", "region": "C"}) == 2
    assert reg.get_sample_value(name, {"source": "live", "region": "signal"}) is None
