"""`na64daq analyze` and `inspect` on every kind of file the system writes; a file without
events is an error that says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from analysis_files import RunFiles

from daq.cli import main
from daq.runfile import RunFileReader, RunFileWriter
from daq.wire import Kind, Message
from monitors.config import MonitorConfig
from trigger.config import BEAM, PHYSICS, RANDOM, TRIGGER_BITS

pytestmark = pytest.mark.slow  # the session's files take a standing run (~4 s)


def _analyze(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["analyze", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _accepted(path: Path) -> list[Message]:
    return [m for m in RunFileReader(path) if m.kind is Kind.ACCEPTED]


@pytest.mark.parametrize("which", ["recorded", "replay"])
def test_recorded_files_are_reanalysed_as_far_as_accepted_events_allow(
        run_files: RunFiles, which: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = getattr(run_files, which)
    res = _analyze(capsys, str(path))
    acc = _accepted(path)
    bits = np.concatenate([m.arrays["bits"] for m in acc])
    ends = {m.spill: m.meta for m in RunFileReader(path) if m.kind is Kind.SPILL_END}
    assert res["kind"] == "recorded" and res["replay"] is (which == "replay")
    assert res["accepted"] == len(bits) > 0
    assert [s["events"] for s in res["spills"]] == [ends[s]["events"] for s in sorted(ends)]
    for name, bit in TRIGGER_BITS.items():
        assert res["totals"]["triggers"][name] == int(np.count_nonzero(bits & bit))
    # features again from the recorded hits, and the trigger re-run, agree event by event
    assert res["totals"]["features"] == {"checked": len(bits), "differ": 0}
    assert res["totals"]["rerun"]["same_bits"] == res["totals"]["rerun"]["events"] == len(bits)
    assert any("re-run" in d for d in res["derived"])
    assert any("rejected" in d for d in res["not_derived"])
    for s in res["spills"]:
        spill_bits = np.concatenate([m.arrays["bits"] for m in acc if m.spill == s["spill"]])
        beams = int(np.count_nonzero(spill_bits & BEAM))
        assert s["eot"]["beam_triggers"] == beams
        assert s["eot"]["value"] == pytest.approx(beams * 1000 / s["eot"]["live_time_ratio"])
        assert s["eot"]["low"] <= s["eot"]["value"] <= s["eot"]["high"]
        unbiased = int(np.count_nonzero(spill_bits & (BEAM | RANDOM)))
        assert s["monitor"]["events"] == unbiased
        # the composition on the recorded neighbour gaps (found among every event of the
        # slice, not among the accepted ones alone)
        got = {k: np.concatenate([m.arrays[k] for m in acc if m.spill == s["spill"]])
               for k in ("bits", "missing", "dt_prev", "dt_next")}
        iso = (((got["bits"] & (BEAM | RANDOM)) != 0) & (got["missing"] == 0)
               & (got["dt_prev"] > MonitorConfig().isolation_before_ns)
               & (got["dt_next"] > MonitorConfig().isolation_after_ns))
        assert s["monitor"]["composition_events"] == int(np.count_nonzero(iso))
    if which == "recorded":  # the gaps were found among every event, not the accepted ones
        dt_prev = np.concatenate([m.arrays["dt_prev"] for m in acc])
        ts_gap = np.diff(np.concatenate([m.arrays["ts"] for m in acc]))
        assert (dt_prev[dt_prev > 0] < 100).sum() > 10 * max(1, int((ts_gap < 100).sum()))
        assert "eot" not in s["monitor"]  # a figure of the beam, not of the sample
    if which == "replay":  # every event the replay sent was built and seen by the trigger
        assert res["events"] == run_files.replay_events


def test_what_if_configuration_on_the_accepted_events(
        run_files: RunFiles, capsys: pytest.CaptureFixture[str]) -> None:
    res = _analyze(capsys, str(run_files.recorded), "--set", "ecal_max_gev=30")
    acc = _accepted(run_files.recorded)
    bits = np.concatenate([m.arrays["bits"] for m in acc])
    e = np.concatenate([m.arrays["e_ecal"] for m in acc])
    # only the E_ECAL bound changed: physics keeps exactly the physics events below 30 GeV
    expect = int(np.count_nonzero((bits & PHYSICS != 0) & (e < 30)))
    assert res["totals"]["rerun"]["triggers"]["physics"] == expect
    assert expect < res["totals"]["triggers"]["physics"]
    assert res["totals"]["rerun"]["triggers"]["beam"] == res["totals"]["triggers"]["beam"]
    assert res["trigger_config"]["ecal_max_gev"] == 30


def test_all_accepted_sample_and_text_output(
        run_files: RunFiles, capsys: pytest.CaptureFixture[str]) -> None:
    res = _analyze(capsys, str(run_files.recorded), "--sample", "accepted")
    assert res["totals"]["monitor"]["events"] == res["accepted"]
    assert res["monitor_sample"].startswith("accepted")
    assert main(["analyze", str(run_files.recorded)]) == 0
    out = capsys.readouterr().out
    assert "recorded run file" in out and "derived: features of" in out
    assert "not derived: figures of the events the trigger rejected" in out


@pytest.mark.parametrize("which", ["raw", "raw_wave"])
def test_raw_files_are_built_and_triggered(
        run_files: RunFiles, which: str, capsys: pytest.CaptureFixture[str]) -> None:
    res = _analyze(capsys, str(getattr(run_files, which)))
    assert res["kind"] == "raw" and res["events"] == 5091 and not res["refused"]
    assert sum(s["events"] for s in res["spills"]) == 5091


def test_truth_and_marker_only_files_are_errors_that_say_why(
        run_files: RunFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(run_files.truth)]) == 2
    err = capsys.readouterr().err
    assert "nothing to analyze" in err and "truth" in err and "raw file" in err

    empty = tmp_path / "empty.na64"
    with RunFileWriter(empty, run=3, config={}, geometry_hash="g", calibration_hash="c") as w:
        w.write(Message(Kind.RUN_START, run=3, src="builder"))
        w.write(Message(Kind.RUN_STOP, run=3, seq=1, src="builder", meta={"reason": "end"}))
    assert main(["analyze", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "markers only (1 run_start, 1 run_stop)" in err

    # a recorded file whose trigger accepted nothing: its spills are there, no event is
    none = tmp_path / "none.na64"
    with RunFileWriter(none, run=1, config={}, geometry_hash="g", calibration_hash="c") as w:
        for m in RunFileReader(run_files.recorded):
            if m.kind is Kind.ACCEPTED:
                m = Message(m.kind, m.run, m.spill, m.seq, m.src, m.board, m.first, 0,
                            {k: v[:0] for k, v in m.arrays.items()}, m.meta, m.replay)
            w.write(m)
    assert main(["analyze", str(none)]) == 2
    assert "the trigger accepted no event in its 2 spill(s)" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.na64")]) == 2


def test_inspect_shows_each_spills_trigger_configuration(
        run_files: RunFiles, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(run_files.recorded), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cfgs = {m.spill: m.meta["cfg"] for m in _accepted(run_files.recorded)}
    assert out["kind"] == "recorded"
    assert {s["spill"]: s["trigger_cfg"] for s in out["spills"]} == cfgs
    [(h, c)] = out["trigger_configs"].items()
    assert h == cfgs[0] and c["ecal_max_gev"] == 90.0
    assert main(["inspect", str(run_files.recorded)]) == 0
    text = capsys.readouterr().out
    assert f"{h}: version 1, E_ECAL < 90.0 GeV" in text and "recorded run file" in text
    assert main(["inspect", str(run_files.raw)]) == 0
    text = capsys.readouterr().out
    assert "raw run file" in text and "none in a raw file" in text
    assert main(["inspect", str(run_files.truth), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "truth"
    assert main(["inspect", str(run_files.replay), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "recorded" and all(s["replay"] and s["trigger_cfg"]
                                             for s in out["spills"])
