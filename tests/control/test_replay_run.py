"""A replay is a run of its own in the standing system: refused during a live run, then
recorded under its own run number, marked replay, with the live run files untouched."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from daq.app import LocalStack
from daq.mqtt import MqttSettings
from daq.replay import ReplayRefused, replay_run
from daq.runfile import RunFileReader
from daq.stack import StackConfig
from daq.wire import Kind
from tests.control.conftest import SecureBroker

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def _settings(b: SecureBroker, user: str) -> MqttSettings:
    return MqttSettings.parse({"host": b.host, "port": b.port, "username": user,
                               "password": b.passwords[user], "timeout": 20.0})


def _raw_file(tmp: Path) -> Path:
    """A raw run (every board's stream) as `na64daq simulate --out` writes it."""
    from daq.geometry import load_calibration, load_geometry
    from daq.runfile import RunFileWriter
    from simulators.config import SimConfig
    from simulators.frontend import FrontEnds
    from simulators.generator import Simulator

    g = load_geometry()
    sim = Simulator(SimConfig.parse({"generated_s": 0.002, "seed": 4, "run": 77}), g,
                    load_calibration(g))
    path = tmp / "raw.na64"
    w = RunFileWriter(path, run=77, config={}, geometry_hash=g.hash, calibration_hash="")
    for em in FrontEnds(sim, spills=2).run():
        w.write(em.msg)
    w.close()
    return path


@pytest.mark.asyncio
async def test_replay_is_refused_during_a_live_run_then_recorded_as_its_own(
        secure_broker: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = secure_broker
    for user in ("runcontrol", "monitor"):
        monkeypatch.setenv(f"NA64_MQTT_{user.upper()}_USERNAME", user)
        monkeypatch.setenv(f"NA64_MQTT_{user.upper()}_PASSWORD", b.passwords[user])
    raw = _raw_file(tmp_path)
    cfg = StackConfig.parse({
        "run_dir": str(tmp_path / "runs"), "workers": 2, "mqtt": b.url,
        "metrics": {"frontend": 0, "builder": 0, "recorder": 0, "monitor": 0, "control": 0,
                    "trigger": 0},
        "simulator": {"pace": "factor", "factor": 84.0,
                      "sim": {"generated_s": 0.002, "seed": 9}},
    }).inproc("replayrun")
    shift = _settings(b, "shift")
    async with LocalStack(cfg, metrics=False) as stack:
        await asyncio.wait_for(stack.control.ready.wait(), 10)
        await stack.start_run()
        live = stack.run
        with pytest.raises(ReplayRefused, match=f"run {live} is running; stop it first"):
            await replay_run(raw, cfg.endpoints.builder_in, shift)
        assert stack.run_state == "running" and stack.run == live  # nothing changed
        await stack.stop_run()
        [live_file] = stack.recorder.rec.files
        digest = hashlib.sha256(live_file.read_bytes()).hexdigest()
        res, stop = await replay_run(raw, cfg.endpoints.builder_in, shift)
        assert stop["ok"] and stop["run"] == live + 1, stop
        replay_file = stack.recorder.rec.files[-1]
        assert replay_file.name == f"replay-run{live + 1:06d}.na64"
        # the live run's file is untouched; the replay's holds what was sent, marked replay
        assert hashlib.sha256(live_file.read_bytes()).hexdigest() == digest
        reader = RunFileReader(replay_file)
        msgs = list(reader)
        assert reader.report.closed_cleanly
        assert {m.run for m in msgs} == {live + 1} and all(m.replay for m in msgs)
        assert sorted(reader.report.spills) == [0, 1]
        assert all(s.complete for s in reader.report.spills.values())
        # run control's count is the monitors' count of what was sent
        assert stop["events"] == res.events > 0
        assert stack.monitor.run_summaries[-1]["source"] == "replay"
        # and the next live run is a live run again
        await stack.start_run(spills=1)
        await stack.wait_run_closed()
        last = stack.recorder.rec.files[-1]
        assert last.name == f"run{live + 2:06d}.na64"
        msgs = list(RunFileReader(last))
        assert any(m.kind is Kind.ACCEPTED for m in msgs)
        assert not any(m.replay for m in msgs)
