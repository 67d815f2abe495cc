"""The real services, scraped by a real Prometheus: every dashboard panel has data, alerts.

Services: daq.app.LocalStack (run control, simulator, builder, two trigger workers,
recorder, monitors: the standing system in one process), each with its own registry on
its own free loopback port; Prometheus scrapes them every
second with the generated configuration and rules (short `for:`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prom_stack import SERVICES, Prometheus, StackThread, stack_config

from monitors.dashboards.catalog import DASHBOARDS
from monitors.dashboards.model import concrete

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

FOR_S = 3.0  # the integration tests' `for:` (the deployed rules use ~a minute)


def _has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with at least one finite sample."""
    for series in result:
        values = series.get("values") or [series.get("value")]
        for v in values:
            if v is not None and math.isfinite(float(v[1])):
                return True
    return False


class Run:
    def __init__(self, prom: Prometheus, pipe: StackThread, start: float, end: float) -> None:
        self.prom, self.pipe, self.start, self.end = prom, pipe, start, end


@pytest.fixture(scope="module")
def nominal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A nominal run (6e6 e-/spill, 8 spills at 8x SPS speed), scraped from before it starts."""
    work = tmp_path_factory.mktemp("nominal")
    cfg = stack_config(work / "runs", spills=8, factor=8.0, intensity=6e6, generated_s=0.03,
                       tag="nominal")
    pipe = StackThread(cfg)
    prom = None
    try:
        prom = Prometheus(work / "prom", cfg, for_s=FOR_S)
        prom.wait_up(len(SERVICES))
        time.sleep(1.5)  # a few scrapes of the idle services: run 0 before the run starts
        start = time.time()
        pipe.go()
        pipe.join()
        time.sleep(3.0)  # the last spill and the run stop scraped, the rules evaluated
        yield Run(prom, pipe, start - 2, time.time())
    finally:
        pipe.close()
        if prom is not None:
            prom.stop()


def _panels() -> list[tuple[str, str, str]]:
    return [(d.uid, p.title, q.expr) for d in DASHBOARDS for p in d.panels() for q in p.queries]


@pytest.mark.parametrize(("uid", "title", "expr"), _panels(),
                         ids=[f"{u}:{t}:{e[:30]}" for u, t, e in _panels()])
def test_every_panel_query_returns_data(nominal: Run, uid: str, title: str, expr: str) -> None:
    result = nominal.prom.query_range(concrete(expr), nominal.start, nominal.end)
    assert _has_data(result), f"{uid} / {title}: {concrete(expr)} returned no data"


@pytest.mark.parametrize("name", ["Run start", "Run stop"])
def test_run_start_and_stop_annotations(nominal: Run, name: str) -> None:
    d = DASHBOARDS[0]
    (ann,) = [a for a in d.annotations if a.name == name]
    result = nominal.prom.query_range(ann.expr, nominal.start, nominal.end)
    assert _has_data(result), f"{name}: {ann.expr} marked nothing"
    for other in DASHBOARDS:
        assert [a.expr for a in other.annotations] == [a.expr for a in d.annotations]


def test_nominal_run_figures_and_no_alert(nominal: Run) -> None:
    prom = nominal.prom
    veto = prom.query('na64_efficiency_ratio{source="live",detector="veto",bound="value"}')
    assert 0.92 < float(veto[0]["value"][1]) < 0.96
    spills = prom.query('sum(na64_spills_total{source="live"})')
    assert float(spills[0]["value"][1]) == 8
    # no shift alert fired, or was even pending, at any time during the nominal run; a
    # scrape that times out on a loaded build machine may make ServiceDown pending, never firing
    fired = prom.query_range('ALERTS{alertname!="ServiceDown"} or ALERTS{alertstate="firing"}',
                             nominal.start, nominal.end)
    assert fired == [], [f["metric"] for f in fired]


def test_every_metric_name_belongs_to_one_service(nominal: Run) -> None:
    """Two services exporting one name would mix in every query that does not name the job."""
    shared = nominal.prom.query('count by (__name__) (count by (__name__, job) '
                                '({__name__=~"na64_.+",__name__!="na64_build_info"})) > 1')
    assert shared == [], [s["metric"]["__name__"] for s in shared]


def test_recording_rules_have_every_stage(nominal: Run) -> None:
    res = nominal.prom.query_range("na64:stage_events:rate1m > 0", nominal.start, nominal.end)
    assert {r["metric"]["stage"] for r in res} == {
        "1-frontend", "2-builder", "3-trigger", "4-monitor", "5-recorder (accepted)"}


def test_veto_pileup_surge_fires_alerts(tmp_path: Path) -> None:
    """Intensity 3e7 e-/spill: VETO efficiency ~exp(-3e7/4.8 s x 50 ns) = 0.73, pileup ~0.3."""
    cfg = stack_config(tmp_path / "runs", spills=10, factor=8.0, intensity=3e7,
                       generated_s=0.008, tag="surge")
    pipe = StackThread(cfg)
    prom = None
    try:
        prom = Prometheus(tmp_path / "prom", cfg, for_s=FOR_S)
        prom.wait_up(len(SERVICES))
        pipe.go()
        states: dict[str, set[str]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for a in prom.alerts():
                states.setdefault(a["labels"]["alertname"], set()).add(a["state"])
            if {"pending", "firing"} <= states.get("VetoEfficiencyLow", set()) and \
                    "firing" in states.get("PileupHigh", set()):
                break
            time.sleep(0.2)
        assert {"pending", "firing"} <= states.get("VetoEfficiencyLow", set()), states
        assert "firing" in states.get("PileupHigh", set()), states
        (veto,) = [a for a in prom.alerts() if a["labels"]["alertname"] == "VetoEfficiencyLow"]
        assert veto["labels"] == {"alertname": "VetoEfficiencyLow", "source": "live",
                                  "detector": "veto", "severity": "warning"}
        assert veto["annotations"]["runbook_url"] == "docs/monitors.md#vetoefficiencylow"
        assert "%" in veto["annotations"]["summary"]
        assert "HadronFractionHigh" not in states
        assert "firing" not in states.get("ServiceDown", set())
        value = prom.query('na64_efficiency_ratio{source="live",detector="veto",bound="value"}')
        assert 0.65 < float(value[0]["value"][1]) < 0.80
        pipe.join()
    finally:
        pipe.close()
        if prom is not None:
            prom.stop()
