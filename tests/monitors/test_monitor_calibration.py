"""The ECAL energy scale from the calibration trigger, and its alarm, against injected gains.

Statistics (seed 3, 6e6 e-/spill, 0.05 s of each spill generated: ~62,000 events): the
calibration trigger (prescale 100) keeps ~540 electrons a spill, ~510 inside the peak's
window; the peak's relative width is 1.8 % (ECAL 1.74 % with the 1 % momentum spread),
so a spill measures the scale to 0.09 % (0.0009). A whole 4.8 s spill has 96 times the
events: 0.009 %. The alarm's band is +-3 %: an 8 % drop is ~55 sigma outside it in the
first spill at the new gain, and at the nominal gain the band is ~33 sigma away (false
alarm probability per spill ~1e-240: none in any number of spills).
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daq.analysis.reanalyze import analyze_file
from daq.app import LocalStack
from daq.errors import ConfigError
from daq.stack import StackConfig
from daq.wire import Kind, Message
from monitors import calibration
from monitors.aggregate import MonitorInputError, RunAnalysis
from monitors.alarms import Alarms
from monitors.analysis import analyze
from monitors.config import MonitorConfig
from monitors.metrics import MonitorMetrics
from monitors.summary import SpillSummary
from monitors.webdata import spill_row
from simulators.physics import PS_BETA
from tests.monitors.monitor_truth import simulate

SIGMAS = 4.0  # tolerance of a measured scale against the truth, in its statistical errors


@cache
def _spills(spills: int = 1, **sim: float | str) -> list[SpillSummary]:
    msgs, _, _ = simulate(intensity=6e6, generated_s=0.05, seed=3, spills=spills, **sim)
    return analyze(msgs, MonitorConfig()).summaries


def test_peak_error_is_the_spread_of_the_peak_estimate() -> None:
    """300 peaks of 1000 Gaussian electrons (width 1.7 %, scale 0.92) on a flat 3 %
    background: the pulls (estimate - truth) / error have mean 0 and RMS 1 within their
    3-sigma sampling errors (0.17 and 0.12)."""
    rng = np.random.default_rng(11)
    pulls = []
    for _ in range(300):
        h = calibration.empty_hist()
        e = np.concatenate([rng.normal(92.0, 1.7, 1000), rng.uniform(80, 120, 30)])
        calibration.fill(h, e, 100.0)
        est = calibration.peak(h)
        assert est is not None
        pulls.append((est.value - 0.92) / est.error)
    p = np.array(pulls)
    assert abs(p.mean()) < 3 / np.sqrt(len(p))
    assert abs(p.std() - 1) < 3 / np.sqrt(2 * len(p))


def test_too_few_calibration_events_give_no_scale() -> None:
    h = calibration.empty_hist()
    calibration.fill(h, np.full(50, 100.0), 100.0)
    assert calibration.peak(h, min_events=100) is None
    assert calibration.peak(calibration.empty_hist()) is None


@pytest.mark.slow
def test_nominal_gain_measures_scale_one_and_raises_no_alarm() -> None:
    """Five spills at the nominal gain: each scale is 1 within 4 errors, no alarm."""
    sums = _spills(5)
    assert len(sums) == 5
    for s in sums:
        sc = s.ecal_scale
        assert sc is not None and sc.n > 400, s.spill
        assert abs(sc.value - 1.0) < SIGMAS * sc.error, (s.spill, sc)
    alarms = Alarms(MonitorConfig().alarms)
    assert [t for s in sums for t in alarms.on_spill(s)] == []  # not even a clearing


@pytest.mark.slow
def test_an_8_percent_gain_drop_is_measured_and_raises_the_alarm_at_once() -> None:
    """ecal_gain_scale=0.92: every spill measures 0.92 within 4 errors, and the first
    spill raises ecal_scale_drift (55 sigma beyond the band)."""
    sums = _spills(3, ecal_gain_scale=0.92)
    for s in sums:
        sc = s.ecal_scale
        assert sc is not None
        assert abs(sc.value - 0.92) < SIGMAS * sc.error, (s.spill, sc)
    alarms = Alarms(MonitorConfig().alarms)
    first = alarms.on_spill(sums[0])
    assert [(t.name, str(t.state)) for t in first] == [("ecal_scale_drift", "raised")]
    assert first[0].value == pytest.approx(0.92, abs=SIGMAS * sums[0].ecal_scale.error)


@pytest.mark.slow
def test_a_drifting_gain_raises_the_alarm_in_the_spill_it_leaves_the_band() -> None:
    """-1.2 % a spill: spill s has gain 1 - 0.012 s (spills 1, 2, 3: 0.988, 0.976, 0.964);
    each is measured within 4 errors, and the alarm is raised at spill 3, the first
    beyond 3 % (spill 2 is 2.4 %, 6 errors inside the band)."""
    sums = _spills(4, ecal_gain_drift=-0.012)
    alarms = Alarms(MonitorConfig().alarms)
    raised_at = []
    for s in sums:
        sc = s.ecal_scale
        assert sc is not None
        assert abs(sc.value - (1 - 0.012 * s.spill)) < SIGMAS * sc.error, (s.spill, sc)
        raised_at += [s.spill for t in alarms.on_spill(s) if str(t.state) == "raised"]
    assert raised_at == [3]


@pytest.mark.slow
def test_a_cell_drift_moves_the_scale_by_that_cells_share() -> None:
    """A 10 % drop of the beam spot's cell (MAIN_2_2) lowers the scale by that cell's share
    of E_ECAL: the simulator puts 1 - E[PS share] = 32/36 of a shower in the main section
    and on average 75 % of that in the centre cell (physics.PS_BETA, _lateral centre),
    0.667: expected 0.933. The same drop of a corner cell far from the spot (MAIN_0_0,
    no deposit) leaves the scale at 1."""
    spot = _spills(1, ecal_gain_drift=-0.1, ecal_drift_cell="MAIN_2_2")[0].ecal_scale
    far = _spills(1, ecal_gain_drift=-0.1, ecal_drift_cell="MAIN_0_0")[0].ecal_scale
    assert spot is not None and far is not None
    assert abs(far.value - 1.0) < SIGMAS * far.error
    share = PS_BETA[1] / (PS_BETA[0] + PS_BETA[1]) * 0.75
    assert abs(spot.value - (1 - 0.1 * share)) < SIGMAS * spot.error, spot


@pytest.mark.asyncio
@pytest.mark.slow
async def test_the_standing_system_raises_the_alarm_on_an_8_percent_drop(tmp_path: Path
                                                                         ) -> None:
    """The whole stack (front ends, builder, two trigger workers, recorder, monitor), the
    simulator at ecal_gain_scale=0.92: the first spill raises ecal_scale_drift, the
    metric says 0.92 within its error, the shift page's data carries the scale."""
    cfg = StackConfig.parse({
        "run_dir": str(tmp_path), "workers": 2,
        "metrics": dict.fromkeys(("frontend", "builder", "recorder", "monitor", "control",
                                  "trigger"), 0),
        "simulator": {"spills": 3, "pace": "max",
                      "sim": {"intensity": 6e6, "generated_s": 0.05, "seed": 3,
                              "ecal_gain_scale": 0.92}},
    }).inproc("calib")
    async with LocalStack(cfg, metrics=False) as stack:
        await stack.start_run(spills=3)
        await stack.wait_run_closed()
        mon = stack.monitor
        sums = sorted((s for s in mon.summaries if s.run == stack.run), key=lambda s: s.spill)
        assert len(sums) == 3
        first = sums[0].ecal_scale
        assert first is not None and abs(first.value - 0.92) < SIGMAS * first.error
        assert mon.alarms["live"].times_raised["ecal_scale_drift"] == 1
        last = sums[-1].ecal_scale
        assert last is not None
        reg = stack.registries["monitor"]
        assert reg.get_sample_value("na64_monitor_ecal_scale",
                                    {"source": "live", "bound": "value"}) == last.value
        assert reg.get_sample_value("na64_alarms_raised_total",
                                    {"source": "live", "alarm": "ecal_scale_drift"}) == 1
        row = spill_row(sums[-1], None)
        assert row["ecal_scale"]["value"] == last.value
    # `na64daq analyze` of the run file the recorder wrote: the same scale from the recorded
    # calibration events (every one is recorded), and the alarm at the first spill
    [run_file] = tmp_path.glob("run*.na64")
    report = analyze_file(run_file)
    scales = [s["ecal_scale"] for s in report["spills"]]
    assert [sc["value"] for sc in scales] == pytest.approx(
        [s.ecal_scale.value for s in sums if s.ecal_scale is not None], abs=1e-12)
    assert [(a["alarm"], a["state"], a["spill"]) for a in report["alarms"]] == [
        ("ecal_scale_drift", "raised", sums[0].spill)]


@pytest.mark.slow
def test_metrics_carry_the_scale_and_nan_without_one() -> None:
    """na64_monitor_ecal_scale{bound=value|low|high}: the scale and value -/+ error; a
    spill without enough calibration events sets NaN (unknown), not the last value."""
    s = _spills(3, ecal_gain_scale=0.92)[0]
    sc = s.ecal_scale
    assert sc is not None
    reg = CollectorRegistry()
    m = MonitorMetrics(reg, MonitorConfig())

    def get(bound: str) -> float | None:
        return reg.get_sample_value("na64_monitor_ecal_scale",
                                    {"source": "live", "bound": bound})

    m.on_spill(s, None, now=1.0)
    assert (get("value"), get("low"), get("high")) == (sc.value, sc.value - sc.error,
                                                       sc.value + sc.error)
    assert reg.get_sample_value("na64_monitor_ecal_scale_events", {"source": "live"}) == sc.n
    m.on_spill(s.model_copy(update={"ecal_scale": None, "spill": s.spill + 1}), None, now=2.0)
    assert all(math.isnan(get(b) or 0.0) for b in ("value", "low", "high"))


@cache
def _reference() -> dict[str, tuple[float, float]]:
    """Each cell's mean energy (and its error) in a nominal spill of another seed: the
    reference run an ECAL expert would take."""
    msgs, _, _ = simulate(intensity=6e6, generated_s=0.05, seed=4)
    [s] = analyze(msgs, MonitorConfig()).summaries
    assert s.ecal_cells is not None
    return {k: (c.mean_gev, c.error_gev) for k, c in s.ecal_cells.items()}


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["MAIN_2_2", "MAIN_2_3"])
def test_a_cell_drift_is_seen_in_that_cell_only(cell: str) -> None:
    """-10 % on the spot cell or on an edge neighbour (4.4 GeV a shower): against the
    reference (a nominal spill of another seed) that cell's scale is 0.9 and every other
    cell's 1.0, each within 4 errors (this spill's and the reference's), and the drifted
    cell is more than 4 errors below 1. The 18 cells are the 3x3 around the beam in both
    sections: the others see nothing."""
    ref = _reference()
    cfg = MonitorConfig(calib_cell_reference={k: m for k, (m, _) in ref.items()})
    msgs, _, _ = simulate(intensity=6e6, generated_s=0.05, seed=3, ecal_gain_drift=-0.1,
                          ecal_drift_cell=cell)
    [s] = analyze(msgs, cfg).summaries
    assert s.ecal_cells is not None and len(s.ecal_cells) == len(ref) == 18
    sigma = {}
    for k, c in s.ecal_cells.items():
        assert c.scale is not None and c.scale_error is not None
        mean, err = ref[k]
        sigma[k] = math.hypot(c.scale_error, c.scale * err / mean)
        expect = 0.9 if k == cell else 1.0
        assert abs(c.scale - expect) < SIGMAS * sigma[k], (k, c, sigma[k])
    drifted = s.ecal_cells[cell].scale
    assert drifted is not None and 1 - drifted > SIGMAS * sigma[cell]  # not a 1
    reg = CollectorRegistry()
    MonitorMetrics(reg, cfg).on_spill(s, None, now=1.0)
    assert reg.get_sample_value("na64_monitor_ecal_cell_scale",
                                {"source": "live", "cell": cell}) == drifted


def test_a_cell_reference_names_ecal_cells() -> None:
    with pytest.raises(ConfigError, match="'MAIN_9_9' is not an ECAL cell"):
        MonitorConfig.parse({"calib_cell_reference": {"MAIN_9_9": 4.4}})
    with pytest.raises(ConfigError, match="must be above 0"):
        MonitorConfig.parse({"calib_cell_reference": {"MAIN_2_2": 0.0}})


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "zs"), [("feature", False), ("waveform", False),
                                          ("waveform", True)])
def test_cell_sums_add_up_to_the_triggers_e_ecal(mode: str, zs: bool) -> None:
    """Each features message's `calib_cells`, in every readout layout (feature hits, full
    and zero-suppressed waveforms): its `n` is the slice's complete calibration-trigger
    events and its cells add up to their E_ECAL (the trigger's sum of the same energies,
    float32 on the wire)."""
    msgs, _, _ = simulate(intensity=6e6, generated_s=0.01, seed=3, mode=mode,
                          zero_suppress=zs)
    feats = [m for m in msgs if m.kind is Kind.FEATURES]
    for m in feats:
        sel = ((m.arrays["bits"] & 8) != 0) & (m.arrays["missing"] == 0)
        cells = m.meta.get("calib_cells")
        if not sel.any():
            assert cells is None
            continue
        assert cells["n"] == int(sel.sum())
        want = float(m.arrays["e_ecal"][sel].astype(np.float64).sum())
        assert sum(cells["sum"].values()) == pytest.approx(want, rel=1e-6)
        assert set(cells["sum"]) == set(cells["sum2"])
    assert sum(m.meta.get("calib_cells", {}).get("n", 0) for m in feats) > 50


@pytest.mark.parametrize("bad", [
    {"n": -1, "sum": {}, "sum2": {}}, {"n": 3, "sum": {"MAIN_9_9": 1.0}, "sum2": {}},
    {"n": 3, "sum": {"MAIN_2_2": float("nan")}, "sum2": {}}, {"n": 3, "sum": [1.0]},
    "cells"])
def test_malformed_cell_sums_are_refused_and_counted(bad: object) -> None:
    msgs, _, _ = simulate(intensity=6e5, generated_s=0.002, seed=3)
    feat = next(m for m in msgs if m.kind is Kind.FEATURES)
    ra = RunAnalysis(MonitorConfig())
    with pytest.raises(MonitorInputError, match="calib_cells"):
        ra.feed(Message(Kind.FEATURES, run=feat.run, spill=feat.spill, seq=0, src="t",
                        board="ALL", first=0, count=feat.count, arrays=feat.arrays,
                        meta={**feat.meta, "calib_cells": bad}))
    assert ra.refused == {"meta": 1} and ra.open_spills == 0
