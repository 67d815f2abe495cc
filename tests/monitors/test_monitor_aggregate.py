"""RunAnalysis on synthetic features: figures against what was injected, spill closing, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monitor_synth import spill_messages

from daq.wire import Kind, Message
from monitors.aggregate import MonitorInputError, RunAnalysis
from monitors.analysis import summarize
from monitors.config import MonitorConfig

CFG = MonitorConfig()


def _run(msgs: list[Message], cfg: MonitorConfig = CFG) -> RunAnalysis:
    ra = RunAnalysis(cfg)
    for m in msgs:
        ra.feed(m)
    return ra


def test_efficiencies_and_pileup_match_injection() -> None:
    rng = np.random.default_rng(11)
    lam_v, lam_h, lam_b = 0.0625, 0.05, 0.075
    msgs, truths = spill_messages(rng, slices=8, slice_events=2500, lam_veto=lam_v,
                                  lam_hcal=lam_h, lam_beam=lam_b)
    ra = _run(msgs)
    [s] = ra.summaries
    assert s.closed == "complete" and s.events == 20000
    sp = np.concatenate([t.species for t in truths])
    nv = np.concatenate([t.n_veto for t in truths])
    nh = np.concatenate([t.n_hcal for t in truths])
    ele = sp == 0
    veto, hcal = s.veto_efficiency, s.hcal_efficiency
    assert veto.n == int(ele.sum())  # every injected electron is in the sample, nothing else
    # measured against the truth of the very same events: exact
    assert veto.k == int((ele & (nv == 0)).sum()) and hcal.k == int((ele & (nh == 0)).sum())
    # and against the injected probability exp(-lambda): within the 68 % interval x 3 sigma
    for est, lam in ((veto, lam_v), (hcal, lam_h)):
        p = math.exp(-lam)
        half = (est.high - est.low) / 2
        assert abs(est.value - p) < 3 * half, (est, p)
    mult = np.concatenate([t.mult for t in truths])
    assert s.pileup_fraction == pytest.approx(float((mult > 1).mean()))
    p_pile = 1 - math.exp(-lam_b)
    assert abs(s.pileup_fraction - p_pile) < 3 * math.sqrt(p_pile * (1 - p_pile) / s.events)
    assert s.mean_multiplicity == pytest.approx(float(mult.mean()))


def test_composition_matches_injection() -> None:
    rng = np.random.default_rng(12)
    msgs, truths = spill_messages(rng, slices=5, slice_events=4000, hadron=0.05, muon=0.02)
    [s] = _run(msgs).summaries
    sp = np.concatenate([t.species for t in truths])
    for code, name in enumerate(("electron", "hadron", "muon")):
        iv = s.composition_intervals[name]
        true = float((sp == code).mean())
        assert iv.k == int((sp == code).sum()), name  # identification is exact on this model
        assert iv.low <= true <= iv.high
        assert s.composition[name] == pytest.approx(iv.value)
    assert s.composition["other"] == 0.0


def test_composition_counts_the_events_the_neighbour_gaps_call_isolated() -> None:
    """With the trigger's gaps the composition counts the isolated complete events only
    (identify.isolated: exactly those past both cuts); without them every complete event;
    half of them, or gaps of another dtype, refuse the message by name and count it."""
    rng = np.random.default_rng(14)
    msgs, truths = spill_messages(rng, slices=3, slice_events=3000, hadron=0.05)
    [plain] = _run(msgs).summaries
    assert plain.composition_events == plain.events - plain.incomplete_events
    gapped, iso = [], []
    for m in msgs:
        if m.kind is Kind.FEATURES:
            gaps = {k: rng.integers(0, 300, m.count, dtype=np.uint16)
                    for k in ("dt_prev", "dt_next")}
            iso.append((gaps["dt_prev"] > CFG.isolation_before_ns)
                       & (gaps["dt_next"] > CFG.isolation_after_ns)
                       & (m.arrays["missing"] == 0))
            m = Message(m.kind, run=m.run, spill=m.spill, seq=m.seq, src=m.src, board=m.board,
                        first=m.first, count=m.count, arrays={**m.arrays, **gaps}, meta=m.meta)
        gapped.append(m)
    [s] = _run(gapped).summaries
    chosen = np.concatenate(iso)
    sp = np.concatenate([t.species for t in truths])
    assert s.composition_events == int(chosen.sum()) > 0
    assert s.composition_intervals["hadron"].k == int((sp[chosen] == 1).sum())
    first = next(m for m in gapped if m.kind is Kind.FEATURES)
    for arrays, why in (
            ({k: v for k, v in first.arrays.items() if k != "dt_next"}, "lack 'dt_next'"),
            ({**first.arrays, "dt_prev": first.arrays["dt_prev"].astype(np.int32)},
             "'dt_prev' is <i4")):
        ra = RunAnalysis(CFG)
        with pytest.raises(MonitorInputError, match=why):
            ra.feed(Message(first.kind, run=first.run, spill=first.spill, seq=first.seq,
                            src=first.src, board=first.board, first=first.first,
                            count=first.count, arrays=arrays, meta=first.meta))
        assert ra.refused == {"arrays": 1}


def test_live_time_eot_triggers_and_signal_box() -> None:
    rng = np.random.default_rng(13)
    msgs, _ = spill_messages(rng, slices=4, slice_events=1000, shed=1000)
    [s] = _run(msgs, MonitorConfig(blind=False)).summaries
    assert s.live_time_ratio == pytest.approx(4000 / 5000)
    assert s.beam_triggers == 4000  # every synthetic event meets the beam condition
    assert s.eot == pytest.approx(5000.0)
    assert s.triggers["beam"] == 40 and s.triggers["random"] == 0
    assert s.accepted == sum(int(m.arrays["bits"].astype(bool).sum()) for m in msgs[:-1])
    assert s.signal_box == 0 and s.shadow_triggers is None and s.scalers == {"beam": 123}
    blind = _run(msgs).summaries[0]
    assert MonitorConfig().blind and blind.signal_box is None  # blind by default


def test_signal_box_counts_missing_energy_electrons() -> None:
    rng = np.random.default_rng(14)
    msgs, truths = spill_messages(rng, slices=1, slice_events=1000)
    f = msgs[0].arrays
    ele = np.flatnonzero((truths[0].species == 0) & (truths[0].n_veto == 0)
                         & (truths[0].n_hcal == 0))[:7]
    f["e_ecal"][ele] = 20.0
    f["e_ps"][ele] = 2.0
    [s] = _run(msgs, MonitorConfig(blind=False)).summaries
    assert s.signal_box == 7


def test_spill_closes_only_when_every_slice_arrived_in_any_order() -> None:
    rng = np.random.default_rng(15)
    msgs, _ = spill_messages(rng, slices=3, slice_events=100, workers=3)
    end = msgs[-1]
    ra = RunAnalysis(CFG)
    assert ra.feed(msgs[0]) == []
    assert ra.feed(end) == []  # via worker 0, the spill_end overtook slices 1 and 2
    assert ra.feed(msgs[2]) == []
    [s] = ra.feed(msgs[1])
    assert s.slices_seen == 3 and s.closed == "complete" and ra.open_spills == 0
    with pytest.raises(MonitorInputError, match="late"):
        ra.feed(Message(Kind.FEATURES, run=1, spill=1, seq=99, src="trigger-9", count=0,
                        arrays={k: v[:0] for k, v in msgs[0].arrays.items()},
                        meta={"slice_index": 3}))
    assert ra.refused == {"late": 1}


def test_lost_slice_forces_close_and_is_counted_as_gap() -> None:
    rng = np.random.default_rng(16)
    seq: dict[str, int] = {}
    stream: list[Message] = []
    for spill in range(1, 8):
        msgs, _ = spill_messages(rng, spill=spill, slices=2, slice_events=50, seq0=seq)
        stream += msgs
    lost = next(m for m in stream if m.spill == 2 and m.kind is Kind.FEATURES)
    stream.remove(lost)
    ra = _run(stream)
    closed = {s.spill: s.closed for s in ra.summaries}
    assert closed[2] == "forced"
    assert all(closed[s] == "complete" for s in closed if s != 2)
    assert ra.stream_gaps == {lost.src: 1}
    assert ra.open_spills == 0  # spill 2 was closed when spill 6 = 2 + max_open_spills closed
    assert ra.totals().forced_spills == 1


def test_bad_input_is_refused_and_counted() -> None:
    rng = np.random.default_rng(17)
    msgs, _ = spill_messages(rng, slices=1, slice_events=10)
    ra = RunAnalysis(CFG)
    bad = msgs[0]
    bad.arrays = {k: v for k, v in bad.arrays.items() if k != "e_veto"}
    with pytest.raises(MonitorInputError, match="e_veto"):
        ra.feed(bad)
    wrong = Message(Kind.FEATURES, run=1, spill=1, seq=5, src="x", count=10,
                    arrays={**msgs[0].arrays, "e_veto": np.zeros(10, np.float64)})
    with pytest.raises(MonitorInputError, match="expected <f4"):
        ra.feed(wrong)
    with pytest.raises(MonitorInputError, match="slices"):
        ra.feed(Message(Kind.SPILL_END, run=1, spill=1, seq=6, src="x",
                        meta={"events": 3, "slices": "3"}))
    with pytest.raises(MonitorInputError, match="run 2"):
        ra.feed(Message(Kind.SPILL_END, run=2, spill=1, seq=7, src="x", meta={"slices": 1}))
    with pytest.raises(MonitorInputError, match="duplicate"):
        ra.feed(Message(Kind.SPILL_START, run=1, spill=1, seq=7, src="x"))
    with pytest.raises(MonitorInputError, match="slice"):
        ra.feed(Message(Kind.SLICE, run=1, spill=1, seq=8, src="x"))
    assert ra.refused == {"arrays": 2, "meta": 1, "run": 1, "duplicate": 1, "kind": 1}


def test_summarize_is_the_analyze_object_and_totals_add_up() -> None:
    rng = np.random.default_rng(18)
    seq: dict[str, int] = {}
    stream: list[Message] = []
    for spill in (1, 2, 3):
        stream += spill_messages(rng, spill=spill, slices=2, slice_events=500, seq0=seq)[0]
    out = summarize(stream, CFG)
    assert out["run"] == 1 and len(out["spills"]) == 3
    first = out["spills"][0]
    for key in ("spill", "events", "eot", "live_time_ratio", "triggers", "pileup_fraction",
                "veto_efficiency", "hcal_efficiency", "composition", "incomplete_events",
                "signal_box"):
        assert key in first, key
    assert set(first["veto_efficiency"]) >= {"value", "low", "high", "n"}
    assert set(first["composition"]) == {"electron", "hadron", "muon", "other"}
    tot = out["totals"]
    assert tot["events"] == 3000 == sum(s["events"] for s in out["spills"])
    assert tot["veto_efficiency"]["n"] == sum(s["veto_efficiency"]["n"] for s in out["spills"])
    assert tot["spills"] == 3 and tot["stream_gaps"] == {}


def test_incomplete_events_use_builder_account_and_missing_bits() -> None:
    rng = np.random.default_rng(19)
    msgs, truths = spill_messages(rng, slices=2, slice_events=100)
    msgs[0].arrays["missing"][:5] = 1 << 3  # VETO (geometry order BEAM SRD ECAL VETO HCAL)
    msgs[-1].meta["incomplete"] = {"VETO": 5}
    [s] = _run(msgs).summaries
    assert s.incomplete_events == 5 and s.incomplete_fraction == pytest.approx(5 / 200)
    assert s.incomplete_by_board == {"VETO": 5}
    # incomplete events are left out of the physics sample: a missing VETO reads zero
    ele = np.concatenate([t.species for t in truths]) == 0
    assert s.veto_efficiency.n == int(ele[5:].sum())


def test_spectra_kept_per_spill_and_exported() -> None:
    from monitors.spectra import to_json

    rng = np.random.default_rng(20)
    seq: dict[str, int] = {}
    stream: list[Message] = []
    for spill in (1, 2):
        stream += spill_messages(rng, spill=spill, slices=2, slice_events=300, seq0=seq)[0]
    ra = _run(stream)
    assert sorted(ra.spectra) == [1, 2]
    out = to_json(ra.spectra)
    for spill in ("1", "2"):
        ecal = out[spill]["ecal"]
        assert sum(ecal["counts"]) == 600 and len(ecal["edges"][0]) == CFG.ecal_bins + 1
        plane = np.array(out[spill]["plane"]["counts"])
        assert plane.shape == (CFG.plane_bins + 2,) * 2 and plane.sum() == 600
    peak = np.argmax(out["1"]["ecal"]["counts"][1:-1])
    edges = out["1"]["ecal"]["edges"][0]
    assert edges[peak] <= 100.0 <= edges[peak + 1] + 2.0  # electrons at the beam energy
    assert ra.run_spectra.ecal.sum() == 1200


def test_each_spill_carries_the_physics_trigger_threshold_it_ran_with() -> None:
    """A trigger expert's new E_ECAL cut shows from the spill the builder applies it in
    (its spill_start says so, forwarded by a worker), so the shift page draws the cut the
    data were taken with; a spill whose start did not say has none."""
    rng = np.random.default_rng(5)
    ra = RunAnalysis(MonitorConfig())
    seq: dict[str, int] = {}
    closed = []
    for spill, gev in ((1, 90.0), (2, 80.0), (3, None)):
        if gev is not None:
            seq["trigger-0"] = seq.get("trigger-0", -1) + 1
            meta = {"t0_ns": spill * 10**9, "cfg": f"c{gev:g}",
                    "trigger_config": {"ecal_max_gev": gev}}
            ra.feed(Message(Kind.SPILL_START, run=1, spill=spill, seq=seq["trigger-0"],
                            src="trigger-0", meta=meta))
        msgs, _ = spill_messages(rng, spill=spill, seq0=seq)
        for m in msgs:
            closed += ra.feed(m)
    assert [(s.spill, s.trigger_ecal_max_gev) for s in closed] == [(1, 90.0), (2, 80.0),
                                                                   (3, None)]
