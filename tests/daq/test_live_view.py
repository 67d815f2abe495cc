"""The demo's terminal view: rates in Hz, lost/shed per spill, builder health, alarm lines
with formatted values (never raw floats)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitors"))
from monitor_synth import spill_messages

from daq.live import view
from monitors.aggregate import RunAnalysis
from monitors.alarmtext import line
from monitors.config import Band, MonitorConfig


def _render(renderable: Any, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _summaries() -> list[dict[str, Any]]:
    ra = RunAnalysis(MonitorConfig(), run=3)
    seq: dict[str, int] = {}
    rng = np.random.default_rng(2)
    for spill in (1, 2):
        msgs, _ = spill_messages(rng, run=3, spill=spill, slices=2, slice_events=2000,
                                 shed=100, seq0=seq)
        for m in msgs:
            ra.feed(m)
    out = [s.model_dump(mode="json") for s in ra.summaries]
    out[1]["scalers"] = {**out[1]["scalers"], "beam": out[1]["events"] + 100 + 7}
    return out


def test_rates_in_hz_lost_and_shed_builder_health_and_alarm_lines() -> None:
    sums = _summaries()
    alarm = line("pileup_high", "raised", 0.18234567, Band(high=0.15), run=3, spill=2)
    text = _render(view(run=3, sent_events=9000, summaries=sums, alarms=["pileup_high"],
                        metrics_url="http://127.0.0.1:9103/metrics", elapsed_s=4.0,
                        run_file=None, web_url="http://127.0.0.1:9120/",
                        intervals={1: 16.8, 2: 2.0},
                        builder={"pending_events": 1200, "queued_events": 0,
                                 "refused": {"wire": 0}, "backpressure": False,
                                 "shedding": True},
                        alarm_lines=[alarm]), 160)
    header = next(ln for ln in text.splitlines() if ln.strip().startswith("spill "))
    assert "phys Hz" in header and "beam Hz" in header and "lost/shed" in header
    cols = [h.strip() for h in header.split("  ") if h.strip()]
    rows = [dict(zip(cols, ln.split(), strict=True)) for ln in text.splitlines()
            if ln.split()[:1] in (["1"], ["2"])]
    beam = [s["triggers"]["beam"] for s in sums]
    assert rows[0]["beam Hz"] == f"{beam[0] / 16.8:.0f}" or rows[0]["beam Hz"].endswith("k")
    assert rows[1]["beam Hz"] == f"{beam[1] / 2.0:.0f}" or rows[1]["beam Hz"].endswith("k")
    assert rows[0]["lost/shed"] == "0/100" and rows[1]["lost/shed"] == "7/100"
    assert "builder shedding: pending 1.20k, queued 0, refused 0" in text
    assert "shift page http://127.0.0.1:9120/" in text
    assert "pileup_high raised: 18.23 % (band: at most 15.00 %" in text
    assert not re.search(r"\d\.\d{5,}", text), text  # no raw floats anywhere


def test_without_intervals_rates_are_unknown_not_counts() -> None:
    text = _render(view(run=3, sent_events=0, summaries=_summaries(), alarms=[],
                        metrics_url=None, elapsed_s=1.0, run_file=None), 160)
    rows = [ln.split() for ln in text.splitlines() if ln.split()[:1] == ["1"]]
    assert rows and "-" in rows[0]
    assert "builder -" in text and "none" in text


def test_alarm_lines_in_the_figures_units() -> None:
    assert line("no_spill", "raised", 75.3, Band(high=60)) == (
        "no_spill raised: 75 s (band: at most 60 s; seconds since the last spill closed)")
    assert line("veto_efficiency_low", "cleared", None, Band(low=0.9), run=4) == (
        "veto_efficiency_low cleared (band: at least 90.00 %; VETO zero-threshold "
        "efficiency), run 4")
