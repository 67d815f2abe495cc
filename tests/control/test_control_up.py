"""Trigger configuration over MQTT in the multi-process deployment (`na64daq up` with a
broker): run control lives in the builder's process, a trigger expert's change becomes
active at the next spill boundary across processes, and run commands are refused (the
front ends drive the runs there)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from daq.control import protocol as P
from daq.control.client import ControlClient
from daq.control.mqtt import MqttSettings
from daq.launch import up
from daq.runfile import RunFileReader
from daq.wire import Kind
from tests.conftest import free_tcp_ports
from tests.control.conftest import SecureBroker, env_for
from tests.control.conftest import ctl as cli

pytestmark = pytest.mark.timeout(180)

SPILLS = 15
SIM = {"intensity": 4000.0, "spill_length_s": 0.4, "spill_period_s": 0.4,
       "generated_s": 0.4, "slice_events": 256, "seed": 5, "run": 7}


def _topology(tmp: Path, broker: SecureBroker) -> Path:
    ports = iter(free_tcp_ports(11, block=True))  # the last two: trigger-0/1 /metrics
    topo = {
        "run_dir": str(tmp / "runs"), "workers": 2, "mqtt": broker.url,
        "endpoints": {k: f"tcp://127.0.0.1:{next(ports)}"
                      for k in ("builder_in", "builder_out", "recorder", "monitor")},
        "metrics": {k: next(ports) for k in ("frontend", "builder", "recorder", "monitor",
                                              "control", "trigger")},
        "simulator": {"spills": SPILLS, "pace": "factor", "factor": 1.0, "sim": SIM},
        "builder": {"timeout_s": 0.5},
    }
    path = tmp / "topology.toml"
    path.write_text(tomli_w.dumps(topo))
    return path


def _settings(b: SecureBroker, user: str) -> MqttSettings:
    return MqttSettings.parse({"host": b.host, "port": b.port, "username": user,
                               "password": b.passwords[user], "timeout": 10.0})


async def _until_retained(ctl: ControlClient, topic: str, ok: Any, timeout: float = 60.0
                          ) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        doc = (await ctl.retained(topic, wait=0.3)).get(topic)
        if doc is not None and ok(doc):
            return doc
        assert asyncio.get_running_loop().time() < deadline, f"{topic}: last {doc!r}"


@pytest.mark.asyncio
@pytest.mark.slow
async def test_trigger_change_over_mqtt_under_up(secure_broker: SecureBroker, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    b = secure_broker
    # every process of `up` inherits one environment; builder and monitor use their own
    # accounts, as deployed (each publishes its status under its own user name)
    for svc in ("builder", "monitor"):
        monkeypatch.setenv(f"NA64_MQTT_{svc.upper()}_USERNAME", svc)
        monkeypatch.setenv(f"NA64_MQTT_{svc.upper()}_PASSWORD", b.passwords[svc])
    report: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: report.update(up(_topology(tmp_path, b), timeout_s=150)), daemon=True)
    runner.start()
    async with ControlClient(_settings(b, "expert")) as ctl:
        await _until_retained(ctl, f"{P.STATUS}/builder",
                              lambda d: d.get("status") == "online")
        state = await _until_retained(ctl, P.RUN_STATE, lambda d: True)
        assert state["runs_by"] == "front ends" and state["allowed"] == []
        r = await ctl.run("start")
        assert not r["ok"] and r["error"] == P.STATE and "front ends" in r["reason"], r
        # what the shift crew reads from `na64daq ctl status`
        rc, out, _ = await cli(env_for(b, "shift"), "status")
        assert rc == 0 and "runs are driven by the front ends" in out, out
        assert "builder          online" in out, out
        # during the run: once the shift crew has seen a spill of it
        seen = await _until_retained(ctl, "na64/monitor/spill",
                                     lambda d: d.get("run") == SIM["run"])
        r = await ctl.trigger_set(["ecal_max_gev=55"], comment="under up")
        assert r["ok"] and r["pending"], r
        active = await _until_retained(
            ctl, P.ACTIVE, lambda d: d.get("config", {}).get("ecal_max_gev") == 55)
        assert active["who"] == "expert" and active["run"] == SIM["run"]
        from_spill = active["spill"]
        # the audit trail names who changed what, and from which spill it applied
        history = await _until_retained(
            ctl, P.HISTORY, lambda h: any(e["event"] == "activated" for e in h))
        done = [e for e in history if e["event"] in ("requested", "activated")]
        assert [(e["event"], e["who"]) for e in done] == [("requested", "expert"),
                                                          ("activated", "expert")], history
        assert done[1]["spill"] == from_spill
        # the builder leaves the broker cleanly at the end of the run: status offline
        await asyncio.to_thread(runner.join, 170)
        await _until_retained(ctl, f"{P.STATUS}/builder",
                              lambda d: d.get("status") == "offline", timeout=10)
    assert report["ok"], report
    [path] = sorted((tmp_path / "runs").glob("*.na64"))
    msgs = list(RunFileReader(path))
    assert seen["spill"] < from_spill < SPILLS, (seen["spill"], from_spill)
    cfgs = {m.spill: m.meta["trigger_config"]["ecal_max_gev"] for m in msgs
            if m.kind is Kind.ACCEPTED and m.count}
    assert any(s >= from_spill for s in cfgs), cfgs
    assert all(v == (55 if s >= from_spill else 90) for s, v in cfgs.items()), cfgs
    [config] = [m for m in msgs if m.kind is Kind.CONFIG and m.spill == from_spill]
    assert config.meta["who"] == "expert" and config.meta["trigger_config"]["ecal_max_gev"] == 55


def test_each_service_may_log_in_with_its_own_account(monkeypatch: pytest.MonkeyPatch) -> None:
    from daq.app import mqtt_settings
    from daq.stack import StackConfig

    cfg = StackConfig.parse({"mqtt": "mqtt://127.0.0.1:1883"})
    monkeypatch.setenv("NA64_MQTT_USERNAME", "shared")
    monkeypatch.setenv("NA64_MQTT_PASSWORD", "pw")
    monkeypatch.setenv("NA64_MQTT_BUILDER_USERNAME", "builder")
    assert mqtt_settings(cfg, "builder").username == "shared"  # half an account: not used
    monkeypatch.setenv("NA64_MQTT_BUILDER_PASSWORD", "bpw")
    own = mqtt_settings(cfg, "builder")
    assert (own.username, own.password.get_secret_value()) == ("builder", "bpw")
    assert mqtt_settings(cfg, "monitor").username == "shared"
    assert mqtt_settings(cfg).username == "shared"
    assert mqtt_settings(StackConfig.parse({}), "builder") is None


def test_the_builder_starts_with_what_run_control_had_made_active(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `serve builder` under a broker reads run control's persisted state before it takes a
    # slice: a restarted builder does not build with the default until the broker answers
    from prometheus_client import CollectorRegistry

    from daq.app import Factory
    from daq.config import content_hash
    from daq.control.state import ControlState
    from daq.control.store import StateStore
    from daq.launch import _builder_control
    from daq.stack import StackConfig
    from trigger.config import TriggerConfig

    new = TriggerConfig.parse({"ecal_max_gev": 55}).model_dump(mode="json")
    store = StateStore(tmp_path / "runs" / "control")
    store.save(ControlState(trigger_active={"config": new, "who": "expert", "cfg": "x"}))
    ep = iter(free_tcp_ports(4))
    cfg = StackConfig.parse({
        "run_dir": str(tmp_path / "runs"), "mqtt": "mqtt://127.0.0.1:1",
        "endpoints": {k: f"tcp://127.0.0.1:{next(ep)}"
                      for k in ("builder_in", "builder_out", "recorder", "monitor")}})
    monkeypatch.setenv("NA64_MQTT_USERNAME", "builder")  # never connects in this test
    monkeypatch.setenv("NA64_MQTT_PASSWORD", "unused")
    svc = Factory(cfg).builder(CollectorRegistry())
    try:
        assert svc.builder.active_config[1] != content_hash(new)  # the default, so far
        assert _builder_control(cfg, svc, CollectorRegistry()) is not None
        assert svc.builder.active_config == (new, content_hash(new))
    finally:
        svc.pull.close(linger=0)
        svc.push.close(linger=0)
