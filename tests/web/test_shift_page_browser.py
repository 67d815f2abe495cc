"""The shift page in a real browser (Playwright, Debian's headless Chromium) against a
running demo: every plot drawn, the numbers equal to /metrics, and the page following the
next spill without a reload."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_stack import DemoThread, chromium, demo_config, scrape

from trigger.config import TriggerConfig

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SPILLS = 6
FACTOR = 6.0  # a spill closes every 16.8 s / 6 = 2.8 s

#: page key -> (metric, labels besides source="live")
AGAINST_METRICS: dict[str, tuple[str, dict[str, str]]] = {
    "run": ("na64_run_number", {}),
    "spill": ("na64_spill_number", {}),
    "beam_on": ("na64_beam_on", {}),
    "eot_total": ("na64_eot_total", {}),
    "eot_run": ("na64_run_eot", {}),
    "live_time": ("na64_live_time_ratio", {}),
    "pileup": ("na64_pileup_ratio", {}),
    "veto": ("na64_efficiency_ratio", {"detector": "veto", "bound": "value"}),
    "hcal": ("na64_efficiency_ratio", {"detector": "hcal", "bound": "value"}),
    **{f"comp_{sp}": ("na64_composition_ratio", {"species": sp})
       for sp in ("electron", "hadron", "muon", "other")},
    "comp_events": ("na64_composition_sample_size", {}),
    "ecal_scale": ("na64_monitor_ecal_scale", {"bound": "value"}),
    "sideband_c": ("na64_sideband_c_events", {}),
    "dimuons": ("na64_dimuon_events", {}),
}

_CANVAS_INK = """el => {
  const c = el.querySelector('canvas');
  if (!c || !c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
  return n;
}"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoThread]:
    d = DemoThread(demo_config(tmp_path_factory.mktemp("web") / "runs", spills=SPILLS,
                               factor=FACTOR, tag="web"))
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def browser(demo: DemoThread) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            b.close()


def _page_values(page: Any) -> dict[str, str]:
    return dict(page.eval_on_selector_all(
        "[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value ?? ''])"))


def test_page_draws_every_plot_matches_metrics_and_follows_the_next_spill(
        demo: DemoThread, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(demo.page_url) else None)
    page.goto(demo.page_url)
    page.wait_for_function("Number(document.body.dataset.spills) >= 1", timeout=60_000)

    # every plot rendered: a canvas with ink, and data in it
    plots = page.query_selector_all(".plot")
    assert {p.get_attribute("data-plot") for p in plots} == {
        "ecal", "efficiency", "plane-spill", "plane-run"}
    for p in plots:
        assert p.get_attribute("data-rendered"), p.get_attribute("data-plot")
        assert p.evaluate(_CANVAS_INK) > 1000, p.get_attribute("data-plot")
        assert int(p.get_attribute("data-entries") or 0) > 0, p.get_attribute("data-plot")

    # the numbers on the page are those on /metrics (read while no spill closes between)
    for _ in range(40):
        before = _page_values(page)
        metrics = scrape(demo.metrics_url)
        after = _page_values(page)
        live = {k: v for k, v in metrics.items() if ("source", "live") in k[1]}
        spill = live.get(("na64_spill_number", (("source", "live"),)))
        if before == after and before.get("spill") and float(before["spill"]) == spill:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the page and /metrics never showed the same spill")
    for key, (name, labels) in AGAINST_METRICS.items():
        want = metrics[(name, tuple(sorted({**labels, "source": "live"}.items())))]
        got = float(before[key]) if before[key] != "" else math.nan
        assert got == pytest.approx(want, rel=1e-9, nan_ok=True), (key, got, want)
    # blind by default: the page shows no box count, and has none to show
    assert page.text_content("[data-key=signal_box]") == "blind"
    assert before["signal_box"] == ""
    raised = dict(page.eval_on_selector_all(
        "#alarms li", "els => els.map(e => [e.dataset.alarm, e.dataset.raised])"))
    for alarm, up in raised.items():
        assert metrics[("na64_alarm_active", (("alarm", alarm), ("source", "live")))] == \
            float(up), alarm
    assert page.text_content("[data-key=beam_on]") == "ON"
    # the E_ECAL plot's dashed cut is the one the builder applied (the trigger's default)
    assert page.text_content("#ecal-thr") == f"{TriggerConfig().ecal_max_gev:g} GeV"

    # the next spill changes the page, without a reload
    n = int(page.evaluate("document.body.dataset.spills"))
    spill_text = page.text_content("[data-key=spill]")
    eot = before["eot_total"]
    rendered = page.get_attribute("#plot-ecal", "data-rendered")
    page.evaluate("window.__same_document = true")
    page.wait_for_function(f"Number(document.body.dataset.spills) > {n}", timeout=30_000)
    assert page.evaluate("window.__same_document") is True  # no reload happened
    assert page.text_content("[data-key=spill]") != spill_text
    assert _page_values(page)["eot_total"] != eot
    assert page.get_attribute("#plot-ecal", "data-rendered") != rendered

    assert errors == [], errors
    assert outside == [], f"the page fetched from elsewhere: {outside}"
    page.close()


def test_every_data_endpoint_the_page_draws_is_json_a_client_reads(
        demo: DemoThread, browser: Any) -> None:
    """What the page fetches, a Python client fetches too: the run's E_ECAL as numpy."""
    import json
    import urllib.request

    import numpy as np

    with urllib.request.urlopen(demo.page_url + "api/spectra/ecal?scope=run", timeout=5) as r:
        h = json.loads(r.read())
    edges, counts = np.array(h["axes"][0]["edges"]), np.array(h["counts"])
    assert len(edges) == len(counts) + 1 and counts.sum() > 0
    peak = edges[np.argmax(counts)]
    assert 95 <= peak <= 102, peak  # the 100 GeV electrons
    page = browser.new_page()
    page.goto(demo.page_url + "api/spectra/plane?scope=spill&format=root")
    doc = json.loads(page.inner_text("body"))
    assert doc["_typename"] == "TH2D" and sum(doc["fArray"]) > 0
    page.close()


def test_screenshot_command_is_documented() -> None:
    root = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "docs/monitors.md"):
        text = (root / doc).read_text()
        assert "img/shift-page.png" in text and "scripts/shift_screenshot.py" in text, doc
    assert (root / "docs/img/shift-page.png").stat().st_size > 50_000
