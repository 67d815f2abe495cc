"""Prometheus series from closed spills: values, names, and promtool's lint."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from monitor_synth import spill_messages
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitors.aggregate import RunAnalysis
from monitors.config import MonitorConfig
from monitors.metrics import METRICS, MonitorMetrics
from tests.conftest import require_binary


def _closed(cfg: MonitorConfig, source: str = "live") -> RunAnalysis:
    msgs, _ = spill_messages(np.random.default_rng(3), slices=2, slice_events=1000, shed=500)
    ra = RunAnalysis(cfg, source="replay" if source == "replay" else "live")
    for m in msgs:
        ra.feed(m)
    return ra


def _samples(reg: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_spill_figures_become_series() -> None:
    cfg = MonitorConfig(blind=False)
    reg = CollectorRegistry()
    mm = MonitorMetrics(reg, cfg)
    ra = _closed(cfg)
    [s] = ra.summaries
    mm.on_spill(s, ra.spectra[s.spill], now=1.7e9)
    got = _samples(reg)
    assert got[("na64_eot_total", (("source", "live"),))] == pytest.approx(s.eot)
    assert got[("na64_eot_total", (("source", "replay"),))] == 0.0  # never mixed
    assert got[("na64_efficiency_ratio", (("bound", "value"), ("detector", "veto"),
                                          ("source", "live")))] == pytest.approx(
        s.veto_efficiency.value)
    assert got[("na64_efficiency_sample_size", (("detector", "hcal"), ("source", "live")))] \
        == s.hcal_efficiency.n
    assert got[("na64_trigger_events_total", (("source", "live"), ("type", "beam")))] == 20
    assert got[("na64_spill_number", (("source", "live"),))] == 1
    assert got[("na64_live_time_ratio", (("source", "live"),))] == pytest.approx(2000 / 2500)
    assert got[("na64_ecal_energy_gev_count", (("source", "live"),))] == s.events
    inf = got[("na64_ecal_energy_gev_bucket", (("le", "+Inf"), ("source", "live")))]
    assert inf == s.events
    assert got[("na64_signal_box_events", (("source", "live"),))] == 0
    names = {n for n, _ in got}
    for name, (kind, _, _) in METRICS.items():
        if kind == "histogram":
            assert f"{name}_count" in names or name == "na64_monitor_processing_seconds"
    for name in ("na64_run_number", "na64_pileup_ratio", "na64_composition_ratio"):
        assert name in names


def test_blind_run_has_no_signal_box_series() -> None:
    cfg = MonitorConfig()  # blind by default
    reg = CollectorRegistry()
    mm = MonitorMetrics(reg, cfg)
    ra = _closed(cfg)
    mm.on_spill(ra.summaries[0], None, now=0.0)
    assert not any(n == "na64_signal_box_events" for n, _ in _samples(reg))


@pytest.mark.prometheus
def test_promtool_check_metrics_is_clean() -> None:
    promtool = require_binary("promtool")
    cfg = MonitorConfig()
    reg = CollectorRegistry()
    mm = MonitorMetrics(reg, cfg)
    ra = _closed(cfg)
    mm.on_spill(ra.summaries[0], ra.spectra[1], now=1.0)
    mm.on_message("features", 1e-4)
    mm.on_refused("arrays")
    mm.init_alarms("live")
    r = subprocess.run([promtool, "check", "metrics"], input=generate_latest(reg),
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == b"", (r.stdout + r.stderr).decode()


def test_run_eot_counts_the_current_run_and_beam_on_follows_the_spills() -> None:
    """na64_run_eot: 0 at a run's start, the sum of its spills' EOT; na64_beam_on: 1 while
    the last spill closed less than no_spill_s ago (judged when scraped)."""
    cfg = MonitorConfig()
    reg = CollectorRegistry()
    now = [1.7e9]
    mm = MonitorMetrics(reg, cfg, clock=lambda: now[0])
    live = (("source", "live"),)
    assert _samples(reg)[("na64_beam_on", live)] == 0.0
    ra = _closed(cfg)
    [s] = ra.summaries
    mm.on_run_start("live", s.run)
    mm.on_spill(s, None, now=now[0])
    mm.on_spill(s, None, now=now[0])
    got = _samples(reg)
    assert got[("na64_run_eot", live)] == pytest.approx(2 * s.eot)
    assert got[("na64_eot_total", live)] == pytest.approx(2 * s.eot)
    assert got[("na64_beam_on", live)] == 1.0
    assert got[("na64_beam_on", (("source", "replay"),))] == 0.0
    now[0] += cfg.alarms.no_spill_s + 1
    assert _samples(reg)[("na64_beam_on", live)] == 0.0
    mm.on_run_start("live", s.run + 1)  # the next run counts from zero; the total does not
    got = _samples(reg)
    assert got[("na64_run_eot", live)] == 0.0
    assert got[("na64_eot_total", live)] == pytest.approx(2 * s.eot)
    mm.on_spill(s.model_copy(update={"run": s.run + 2}), None, now=now[0])  # no run_start
    assert _samples(reg)[("na64_run_eot", live)] == pytest.approx(s.eot)


def test_ecal_buckets_are_fine_around_the_trigger_threshold_and_the_beam_peak() -> None:
    """90 GeV (the missing-energy threshold) and 100 GeV (the beam) are bucket edges, with
    every 1.25 GeV bin from 85 to 105 GeV; each bucket counts exactly what lies below it."""
    cfg = MonitorConfig()
    reg = CollectorRegistry()
    mm = MonitorMetrics(reg, cfg)
    ra = _closed(cfg)
    [s] = ra.summaries
    sp = ra.spectra[s.spill]
    sp.ecal.fill(np.array([89.9, 90.1, 99.0, 100.4, 140.0, -1.0]))
    mm.on_spill(s, sp, now=1.7e9)
    got = _samples(reg)
    les = sorted(float(dict(k)["le"]) for n, k in got
                 if n == "na64_ecal_energy_gev_bucket" and dict(k)["source"] == "live")
    assert {90.0, 100.0} <= set(les)
    fine = [x for x in les if 85 <= x <= 105]
    assert fine == [85 + 1.25 * i for i in range(17)]
    assert les[-1] == float("inf") and les[0] == 10.0
    values = sp.ecal.values(flow=True)
    edges = sp.ecal.axes[0].edges
    for le in (90.0, 100.0, 91.25):
        want = values[0] + values[1:-1][edges[1:] <= le + 1e-9].sum()
        assert got[("na64_ecal_energy_gev_bucket", (("le", f"{le}"), ("source", "live")))] \
            == want, le
    hcal = sorted(float(dict(k)["le"]) for n, k in got if n == "na64_hcal_energy_gev_bucket")
    assert len(hcal) == 13  # E_HCAL keeps every 10th edge (12.5 GeV), and +Inf
