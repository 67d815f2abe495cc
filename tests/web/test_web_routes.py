"""The shift page's server and documents without a browser: every route, the figures
against the monitor's own summaries, the ROOT JSON layout, refusals."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitors"))
from monitor_synth import spill_messages

from daq.errors import ConfigError
from daq.wire import Kind, Message
from monitors.config import MonitorConfig
from monitors.service import MonitorService
from monitors.web import STATIC, ShiftPage


def _get(page: ShiftPage, target: str) -> tuple[int, str, bytes]:
    return page.respond(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n")


def _json(page: ShiftPage, target: str) -> object:
    status, ctype, body = _get(page, target)
    assert status == 200 and ctype == "application/json", (target, status, body[:200])
    return json.loads(body)


@pytest.fixture
def page() -> Iterator[ShiftPage]:
    """A monitor (no sockets: fed by hand) with two closed spills of run 7."""
    now = [1.7e9]
    svc = MonitorService("inproc://web-test", config=MonitorConfig(),
                         registry=CollectorRegistry(), clock=lambda: now[0])
    rng = np.random.default_rng(11)
    svc.handle(Message(kind=Kind.RUN_START, run=7, spill=0, seq=0, src="trigger-0"))
    seq: dict[str, int] = {"trigger-0": 0}
    for spill in (1, 2):
        now[0] += 16.8
        msgs, _ = spill_messages(rng, run=7, spill=spill, slices=2, slice_events=1500,
                                 shed=300, seq0=seq)
        for m in msgs:
            svc.handle(m)
    p = ShiftPage(svc, port=0)
    yield p
    p.close()


def test_state_has_every_figure_of_the_last_spill_and_the_run(page: ShiftPage) -> None:
    s = _json(page, "/api/state")
    assert isinstance(s, dict)
    ra = page.monitor.analyses["live"]
    last = ra.summaries[-1]
    assert (s["run"], s["spill"], s["spills_closed"], s["source"]) == (7, 2, 2, "live")
    assert s["run_state"] == "running"  # no run control: the monitor's own view
    assert s["beam_on"] is True and s["since_last_spill_s"] == 0.0
    assert s["eot"]["run"] == pytest.approx(sum(x.eot for x in ra.summaries))
    assert s["eot"]["total"] == s["eot"]["run"] and s["eot"]["last_spill"] == last.eot
    assert s["live_time"] == pytest.approx(3000 / 3300)
    assert s["dead_time"] == pytest.approx(300 / 3300)
    assert s["pileup"] == last.pileup_fraction
    assert s["efficiency"]["veto"]["value"] == last.veto_efficiency.value
    assert s["efficiency"]["hcal"]["low"] == last.hcal_efficiency.low
    assert s["composition"] == last.composition
    # rates: the last spill's events over the 16.8 s since the spill before closed
    assert s["rates_hz"]["beam"] == pytest.approx(last.triggers["beam"] / 16.8)
    assert [r["spill"] for r in s["recent"]] == [1, 2]
    assert s["recent"][0]["seconds"] == pytest.approx(16.8)  # since the run started
    assert {b["board"] for b in s["boards"]} == {"BEAM", "SRD", "ECAL", "VETO", "HCAL"}
    assert {a["name"] for a in s["alarms"]} == {
        "veto_efficiency_low", "hcal_efficiency_low", "pileup_high", "hadron_fraction_high",
        "incomplete_high", "ecal_scale_drift", "no_spill"}
    scale = last.ecal_scale.model_dump() if last.ecal_scale is not None else None
    assert s["calibration"]["scale"] == scale == s["recent"][-1]["ecal_scale"]
    assert s["calibration"]["band"] == {"low": 0.97, "high": 1.03}
    pile = next(a for a in s["alarms"] if a["name"] == "pileup_high")
    assert pile["value"] == last.pileup_fraction and "intensity" in pile["runbook"]
    box = s["regions"]["signal"]
    assert (box["ecal_hi"], box["hcal_hi"]) == (50.0, 1.0)
    assert s["regions"]["C"]["ecal_lo"] == 50.0 and s["regions"]["C"]["ecal_hi"] == 90.0


def test_spectra_endpoints_per_spill_and_per_run(page: ShiftPage) -> None:
    ra = page.monitor.analyses["live"]
    run = _json(page, "/api/spectra/ecal?scope=run")
    spill = _json(page, "/api/spectra/ecal?scope=spill")
    assert isinstance(run, dict) and isinstance(spill, dict)
    assert run["entries"] == int(ra.run_spectra.ecal.values(flow=True).sum())
    assert np.array_equal(run["counts"], ra.run_spectra.ecal.values())
    assert spill["spill"] == 2 and spill["run"] == 7
    assert spill["entries"] < run["entries"]
    assert len(run["axes"][0]["edges"]) == len(run["counts"]) + 1
    plane = _json(page, "/api/spectra/plane?scope=run")
    assert isinstance(plane, dict)
    assert np.array(plane["counts"]).shape == (60, 60)
    assert plane["entries"] == int(ra.run_spectra.plane.values(flow=True).sum())


def test_root_json_is_a_th1d_and_a_th2d_with_flow_bins_x_fastest(page: ShiftPage) -> None:
    ra = page.monitor.analyses["live"]
    h1 = _json(page, "/api/spectra/ecal?scope=run&format=root")
    assert isinstance(h1, dict)
    assert h1["_typename"] == "TH1D" and h1["fXaxis"]["fNbins"] == 120
    assert h1["fNcells"] == 122 and h1["fXaxis"]["fXmax"] == 150.0
    assert h1["fArray"] == ra.run_spectra.ecal.values(flow=True).tolist()
    h2 = _json(page, "/api/spectra/plane?scope=run&format=root")
    assert isinstance(h2, dict)
    assert h2["_typename"] == "TH2D" and h2["fNcells"] == 62 * 62
    full = ra.run_spectra.plane.values(flow=True)
    # ROOT's global bin = x + (nx + 2) * y
    ix, iy = np.unravel_index(np.argmax(full), full.shape)
    assert h2["fArray"][ix + 62 * iy] == full[ix, iy] > 0


def test_static_files_and_refusals(page: ShiftPage) -> None:
    status, ctype, body = _get(page, "/")
    assert status == 200 and ctype.startswith("text/html") and b"shift.js" in body
    status, ctype, body = _get(page, "/static/vendor/uplot/uPlot.iife.min.js")
    assert status == 200 and "javascript" in ctype and len(body) > 40_000
    assert (STATIC / "vendor/uplot/LICENSE").read_text().startswith("The MIT License")
    for target in ("/static/../web.py", "/static/%2e%2e/web.py", "/nope",
                   "/api/spectra/nope", "/api/spectra/ecal?scope=year",
                   "/api/spectra/ecal?format=png"):
        assert _get(page, target)[0] == 404, target
    assert page.respond("POST / HTTP/1.1\r\n\r\n")[0] == 405
    assert page.respond("garbage\r\n\r\n")[0] == 400
    status, _, body = page.respond("HEAD /api/state HTTP/1.1\r\n\r\n")
    assert status == 200


def test_no_spill_yet_is_served_and_nan_becomes_null() -> None:
    svc = MonitorService("inproc://web-empty", config=MonitorConfig(),
                         registry=CollectorRegistry())
    p = ShiftPage(svc, port=0)
    try:
        s = _json(p, "/api/state")
        assert isinstance(s, dict)
        assert s["run"] is None and s["spill"] is None and s["beam_on"] is False
        assert s["eot"] == {"run": 0.0, "total": 0.0, "last_spill": None}
        h = _json(p, "/api/spectra/plane?scope=spill")
        assert isinstance(h, dict) and h["entries"] == 0
        assert b"NaN" not in p._json(200, {"x": float("nan")})[2]
    finally:
        p.close()


def test_a_taken_port_is_a_config_error_naming_the_field() -> None:
    svc = MonitorService("inproc://web-port", config=MonitorConfig(),
                         registry=CollectorRegistry())
    a = ShiftPage(svc, port=0)
    try:
        with pytest.raises(ConfigError, match=r"metrics\.web"):
            ShiftPage(svc, port=a.port)
    finally:
        a.close()
