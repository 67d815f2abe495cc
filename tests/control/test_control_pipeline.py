"""Run control over MQTT driving the real data path (builder, workers, recorder, monitor)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daq.app import LocalStack
from daq.control.client import ControlClient
from daq.mqtt import MqttSettings
from daq.runfile import RunFileReader
from daq.stack import StackConfig
from daq.wire import Kind
from tests.control.conftest import SecureBroker


def _settings(b: SecureBroker, user: str) -> MqttSettings:
    return MqttSettings.parse({"host": b.host, "port": b.port, "username": user,
                               "password": b.passwords[user], "timeout": 10.0})


async def _until(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_full_run_with_a_trigger_change_on_the_real_data_path(
        secure_broker: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = secure_broker
    # run control and the monitor on the broker with the deployed accounts
    for user in ("runcontrol", "monitor"):
        monkeypatch.setenv(f"NA64_MQTT_{user.upper()}_USERNAME", user)
        monkeypatch.setenv(f"NA64_MQTT_{user.upper()}_PASSWORD", b.passwords[user])
    # spills every ~0.2 s (16.8 s period compressed 84x), each 2 ms of beam at 6e6/spill
    cfg = StackConfig.parse({
        "run_dir": str(tmp_path / "runs"), "workers": 2, "mqtt": b.url,
        "metrics": {"frontend": 0, "builder": 0, "recorder": 0, "monitor": 0, "control": 0,
                    "trigger": 0},
        "simulator": {"spills": 1000, "pace": "factor", "factor": 84.0,
                      "sim": {"generated_s": 0.002, "seed": 9}},
    }).inproc("rc")
    async with LocalStack(cfg, metrics=False) as pipe:
        svc = pipe.control
        await asyncio.wait_for(svc.ready.wait(), 10)
        async with ControlClient(_settings(b, "expert")) as ctl:
            r = await ctl.run("start")
            assert r["ok"], r
            assert svc.core.state.run is not None
            run = svc.core.state.run.run
            await _until(lambda: len(pipe.monitor.summaries) >= 1)
            before = len(pipe.monitor.summaries)
            r = await ctl.trigger_set(["ecal_max_gev=55"], comment="test")
            assert r["ok"], r
            # active from the next spill boundary, reported back by the real builder
            await _until(lambda: svc.core.state.trigger_active is not None
                         and svc.core.state.trigger_active["config"].get("ecal_max_gev") == 55)
            active = svc.core.state.trigger_active
            assert active["who"] == "expert" and active["spill"] >= before
            from_spill = active["spill"]
            await _until(lambda: len(pipe.monitor.summaries) >= from_spill + 2)
            # each spill says which configuration it ran with: the new one from from_spill
            cfg_of = {s.spill: s.trigger_cfg for s in pipe.monitor.summaries}
            assert all(cfg_of[s] == active["cfg"] for s in cfg_of if s >= from_spill), cfg_of
            assert all(cfg_of[s] not in (None, active["cfg"]) for s in cfg_of
                       if s < from_spill), cfg_of
            spill = await ctl.retained("na64/monitor/spill", wait=2.0)
            assert spill["na64/monitor/spill"]["run"] == run  # the shift crew sees the spills
            r = await ctl.run("stop")
            assert r["ok"], r
            # answered once the run is closed: the file is closed, the summary published
            assert not pipe.recorder.rec.writer and len(pipe.recorder.rec.files) == 1
            assert pipe.monitor.run_summaries[-1]["run"] == run
            assert r["spills"] == pipe.monitor.run_summaries[-1]["spills"] >= from_spill + 2
            state = await ctl.status()
            assert state["run"]["state"] == "stopped", state
            # every service's status document, as run control saw it, same process throughout
            assert {d["phase"] for d in state["daq"].values()} == {"configured"}, state["daq"]
            assert set(state["daq"]) == {"frontend", "builder", "trigger-0", "trigger-1",
                                         "recorder", "monitor"}
            # the next run: same services, the next run number
            r = await ctl.run("start")
            assert r["ok"] and r["run"] == run + 1, r
            await _until(lambda: any(s.run == run + 1 for s in pipe.monitor.summaries))
            r = await ctl.run("stop")
            assert r["ok"] and r["spills"] >= 1, r
    assert [p.name for p in pipe.recorder.rec.files] == [f"run{run:06d}.na64",
                                                         f"run{run + 1:06d}.na64"]
    path = pipe.recorder.rec.files[0]
    reader = RunFileReader(path)
    msgs = list(reader)
    assert reader.report.closed_cleanly
    assert all(sp.complete for sp in reader.report.spills.values())  # stopped at a boundary
    start = msgs[0]
    assert start.kind is Kind.RUN_START and start.run == run
    assert start.meta["config"]["run"] == run  # run control's snapshot is in the file
    cfgs = {m.spill: m.meta["trigger_config"]["ecal_max_gev"] for m in msgs
            if m.kind is Kind.ACCEPTED and m.count}
    assert cfgs, "nothing accepted"
    assert all(v == (55 if s >= from_spill else 90) for s, v in cfgs.items()), cfgs
    assert any(m.kind is Kind.CONFIG and m.spill == from_spill for m in msgs)
    # the stop ended the stream at a spill boundary: no empty spill after the last one, and
    # nothing the front ends withheld counted as a lost message
    ends = {m.spill: m.meta.get("events") for m in msgs if m.kind is Kind.SPILL_END}
    assert ends and all(n and n > 0 for n in ends.values()), ends
    assert not +pipe.builder.builder.stats["live"].seq_gaps
