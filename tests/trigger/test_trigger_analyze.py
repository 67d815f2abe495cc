"""`na64daq analyze`: the trigger over raw and built run files, reproducing the stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trigger_data import built_stream, detector

from daq.cli import main
from daq.runfile import RunFileWriter
from daq.wire import Kind, Message, decode
from simulators.config import SimConfig
from simulators.frontend import FrontEnds
from simulators.generator import Simulator
from trigger.analyze import analyze, iter_features
from trigger.config import TriggerConfig
from trigger.processor import SliceProcessor

GEOM, CAL = detector()


def _write(path: Path, msgs: list[Message]) -> Path:
    with RunFileWriter(path, run=1, config={}, geometry_hash=GEOM.hash,
                       calibration_hash=CAL.hash) as w:
        for m in msgs:
            w.write(m)
    return path


def _raw_messages(spills: int = 2) -> list[Message]:
    cfg = SimConfig.parse({"mode": "feature", "generated_s": 0.003, "signal_rate": 0.01,
                           "seed": 4, "slice_events": 512})
    return [decode(em.frames()) for em in FrontEnds(Simulator(cfg, GEOM, CAL),
                                                    spills=spills).run()]


def test_built_file_reproduces_the_online_decisions_including_a_config_change(
        tmp_path: Path) -> None:
    new = TriggerConfig(ecal_max_gev=40.0, version=2).model_dump(mode="json")
    stream = built_stream(spills=2, change=new, change_at=1)
    path = _write(tmp_path / "built.run", stream)
    proc = SliceProcessor(GEOM, CAL)
    online = {(m.spill, m.first): proc.process(m).features
              for m in stream if m.kind is Kind.SLICE}
    replayed = [m for m in iter_features(path) if m.kind is Kind.FEATURES]
    assert len(replayed) == len(online)
    for m in replayed:
        ref = online[(m.spill, m.first)]
        assert m.meta["cfg"] == ref.meta["cfg"]
        np.testing.assert_array_equal(m.arrays["bits"], ref.arrays["bits"])
    res = analyze(path)
    assert [s["spill"] for s in res["spills"]] == [0, 1]
    assert res["spills"][0]["cfg"] != res["spills"][1]["cfg"]
    assert res["events"] == sum(m.count for m in stream if m.kind is Kind.SLICE)


def test_raw_file_goes_through_the_builder_and_override_applies(tmp_path: Path) -> None:
    path = _write(tmp_path / "raw.run", _raw_messages())
    base = analyze(path)
    strict = analyze(path, TriggerConfig(ecal_max_gev=30.0, prescale_beam=1))
    assert base["events"] == strict["events"] > 5000
    assert [s["events"] for s in base["spills"]] == [s["events"] for s in strict["spills"]]
    for b, s in zip(base["spills"], strict["spills"], strict=True):
        assert s["fired"]["physics"] <= b["fired"]["physics"]
        assert s["fired"]["beam"] > b["fired"]["beam"]  # prescale 1 keeps every beam event
        assert 0 < b["accept_rate"] < 0.1
    assert base["refused"] == {}


def test_cli_prints_json_per_spill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "raw.run", _raw_messages(spills=1))
    cfg = tmp_path / "trig.json"
    cfg.write_text(json.dumps({"ecal_max_gev": 70.0, "version": 5}))
    assert main(["analyze", str(path), "--json", "--trigger-config", str(cfg),
                 "--set", "prescale_random=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["spills"]) == 1 and out["events"] > 0
    assert out["spills"][0]["fired"]["random"] > 0.3 * out["events"]
    expected = TriggerConfig(ecal_max_gev=70.0, version=5, prescale_random=2).content_hash()
    assert out["spills"][0]["cfg"] == [expected]
    assert main(["analyze", str(path)]) == 0
    table = capsys.readouterr().out
    assert "Spills" in table and "Run summary" in table and "veto efficiency" in table
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ecal_max_gev": -1}))
    assert main(["analyze", str(path), "--trigger-config", str(bad)]) == 2
    assert "ecal_max_gev" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.run")]) == 2
