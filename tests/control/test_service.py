"""Run control over a real Mosquitto with the deployed configuration, users and ACL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.client import MQTTv5

from daq.control import protocol as P
from daq.control.client import ControlClient, ControlError, RefusedError
from daq.control.datapath import MemoryDataPath
from daq.control.service import RunControlService
from daq.control.store import StateStore
from daq.mqtt import MqttSettings
from tests.conftest import require_binary, stop_pid, wait_for_port
from tests.control.conftest import SecureBroker

pytestmark = [pytest.mark.mosquitto, pytest.mark.asyncio]


def settings(b: SecureBroker, user: str, timeout: float = 5.0) -> MqttSettings:
    return MqttSettings.parse({"host": b.host, "port": b.port, "username": user,
                               "password": b.passwords[user], "timeout": timeout})


@contextlib.asynccontextmanager
async def running(b: SecureBroker, state_dir: Path,
                  dp: MemoryDataPath) -> AsyncIterator[RunControlService]:
    svc = RunControlService(settings(b, "runcontrol"), StateStore(state_dir), dp)
    async with svc:
        await asyncio.wait_for(svc.ready.wait(), 10)
        yield svc


async def eventually(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        v = await fn()
        if v or asyncio.get_running_loop().time() > deadline:
            return v
        await asyncio.sleep(0.05)


async def test_full_run_cycle(secure_broker: SecureBroker, tmp_path: Path) -> None:
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "state", dp) as svc, \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        r = await ctl.run("start", params={"comment": "first light"})
        assert (r["ok"], r["state"], r["run"]) == (True, "running", 1)
        assert dp.run == 1 and dp.snapshot is not None
        assert dp.snapshot["params"]["comment"] == "first light" and dp.snapshot["cfg"]
        dp.spill_start()
        dp.add_events(100, in_flight=7)
        assert (await ctl.run("pause"))["state"] == "paused"
        assert dp.paused
        assert (await ctl.run("resume"))["state"] == "running"
        dp.spill_start()
        r = await ctl.run("stop", reason="end of fill")
        # the in-flight events were drained into the run's count before it closed
        assert (r["state"], r["events"], r["spills"]) == ("stopped", 107, 2)
        assert dp.run is None and dp.closed_runs[0]["events"] == 107
        status = await ctl.status()
        assert status["run"]["state"] == "stopped" and status["run"]["run"]["run"] == 1
        assert status["services"]["runcontrol"]["status"] == "online"
        assert svc.refused("run", "ok") == 4
    rec = StateStore(tmp_path / "state").load_run(1)
    assert rec.events == 107 and rec.stop_reason == "end of fill"
    assert rec.snapshot["trigger_config"]["ecal_max_gev"] == 90.0


async def test_trigger_change_applies_at_next_spill(secure_broker: SecureBroker,
                                                    tmp_path: Path) -> None:
    dp = MemoryDataPath()
    store = StateStore(tmp_path / "state")
    async with running(secure_broker, store.dir, dp), \
            ControlClient(settings(secure_broker, "shift")) as shift, \
            ControlClient(settings(secure_broker, "expert")) as expert:
        await shift.run("start")
        assert dp.spill_start() == 0
        r = await expert.trigger_set(["ecal_max_gev=85", "prescale_beam=500"], comment="test")
        assert r["ok"] and r["pending"] and r["version"] == 2
        assert dp.active_config is None  # not before the spill boundary
        t = await expert.trigger()
        assert t["active"] is None and t["desired"]["who"] == "expert"
        assert dp.spill_start() == 1

        async def active() -> Any:
            return (await expert.trigger())["active"]
        act = await eventually(active)
        assert act["config"]["ecal_max_gev"] == 85.0 and act["config"]["prescale_beam"] == 500
        assert (act["spill"], act["run"], act["who"], act["version"]) == (1, 1, "expert", 2)
        assert act["cfg"] == r["cfg"] and act["id"] is not None
        hist = await eventually(expert.history)
        assert [e["event"] for e in hist] == ["requested", "activated"]
    audit = store.read_audit()
    assert [(e["event"], e["who"]) for e in audit] == [("requested", "expert"),
                                                       ("activated", "expert")]
    assert audit[0]["comment"] == "test"


async def test_shift_cannot_change_trigger(secure_broker: SecureBroker, tmp_path: Path) -> None:
    dp = MemoryDataPath()
    store = StateStore(tmp_path / "state")
    async with running(secure_broker, store.dir, dp) as svc, \
            ControlClient(settings(secure_broker, "shift", timeout=1.0)) as shift:
        with pytest.raises(RefusedError) as e:
            await shift.trigger_set(["ecal_max_gev=10"])
        assert "shift" in str(e.value) and "Not authorized" in str(e.value)
        # nor by writing under the expert's name: the ACL binds the topic to the account
        with pytest.raises(RefusedError):
            await shift.request(f"{P.DESIRED}/expert", {"set": ["ecal_max_gev=10"]})
        # nor by sending a run command under someone else's name
        with pytest.raises(RefusedError):
            await shift.request(P.run_topic("start", "expert"), {})
        assert (await shift.trigger())["active"] is None
        assert sum(svc.refused("trigger", r) for r in ("ok", *P.ERROR_CODES)) == 0
    assert dp.active_config is None and dp.run is None and store.read_audit() == []


BAD = [
    ("start", b"not json", P.MALFORMED),
    ("start", b'{"no_id": 1}', P.MALFORMED),
    ("start", b'{"id": "x", "params": {"beam_energy_gev": 1e6}}', P.RANGE),
    ("start", b'{"id": "y", "params": {"colour": "red"}}', P.RANGE),
    ("explode", b'{"id": "z"}', P.UNKNOWN),
    ("stop", b'{"id": "w"}', P.STATE),
    ("resume", b'{"id": "v"}', P.STATE),
]


async def test_every_bad_command_is_answered_and_changes_nothing(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    dp = MemoryDataPath()
    store = StateStore(tmp_path / "state")
    async with running(secure_broker, store.dir, dp) as svc, \
            ControlClient(settings(secure_broker, "expert")) as ctl:
        before = store.state_path.read_bytes()
        state_before = await ctl.retained(P.RUN_STATE)
        for verb, payload, code in BAD:
            r = await ctl.request_raw(P.run_topic(verb, "expert"), payload)
            assert (r["ok"], r["error"]) == (False, code), (verb, payload, r)
            assert r["reason"] and r["state"] == "idle"
        for payload, code in [(b'{"id": "t1", "set": ["ecal_max_gev=-1"]}', P.RANGE),
                              (b'{"id": "t2", "set": ["nope=1"]}', P.RANGE),
                              (b'{"id": "t3", "config": {"version": "x"}}', P.RANGE),
                              (b'{"id": "t4"}', P.MALFORMED)]:
            r = await ctl.request_raw(f"{P.DESIRED}/expert", payload)
            assert (r["ok"], r["error"]) == (False, code), (payload, r)
        assert store.state_path.read_bytes() == before
        assert (await ctl.retained(P.RUN_STATE))[P.RUN_STATE]["state"] == \
            state_before[P.RUN_STATE]["state"] == "idle"
        assert dp.run is None and dp.active_config is None
        assert svc.refused("run", P.STATE) == 2 and svc.refused("run", P.MALFORMED) == 2
        assert svc.refused("trigger", P.RANGE) == 3
        # refused trigger requests are audited (who tried what), never applied
        assert {e["event"] for e in store.read_audit()} == {"refused"}


async def test_repeated_command_id_is_applied_once(secure_broker: SecureBroker,
                                                   tmp_path: Path) -> None:
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "s", dp) as svc, \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        a = await ctl.run("start", request_id="same-id")
        b = await ctl.run("start", request_id="same-id")
        assert a == b and a["run"] == 1
        assert len(dp.closed_runs) == 0 and dp.run == 1
        assert svc.refused("run", "duplicate") == 1


async def test_crafted_response_topic_is_not_followed(secure_broker: SecureBroker,
                                                      tmp_path: Path) -> None:
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "s", dp):
        async with ControlClient(settings(secure_broker, "shift", timeout=1.0)) as ctl:
            ctl.reply_topic = P.RUN_STATE  # ask the service to overwrite the state topic
            with pytest.raises(ControlError):
                await ctl.run("start", request_id="crafted")
        async with ControlClient(settings(secure_broker, "expert")) as other:
            doc = (await other.retained(P.RUN_STATE))[P.RUN_STATE]
        # still the service's own state document, not a reply
        assert doc["state"] == "running" and "allowed" in doc and "ok" not in doc


async def test_restart_resumes_from_persisted_state(secure_broker: SecureBroker,
                                                    tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with running(secure_broker, state_dir, MemoryDataPath()), \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        await ctl.run("start")
        await ctl.run("stop")
        assert (await ctl.run("start"))["run"] == 2
    # the service went away with run 2 open: it comes back in error with run 2 closed
    dp = MemoryDataPath()
    async with running(secure_broker, state_dir, dp), \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        st = (await ctl.status())["run"]
        assert (st["state"], st["last_run"], st["run"]["run"]) == ("error", 2, 2)
        assert "restarted" in st["run"]["stop_reason"]
        r = await ctl.run("start")
        assert (r["ok"], r["error"]) == (False, P.STATE)
        assert (await ctl.run("reset"))["state"] == "idle"
        assert (await ctl.run("start"))["run"] == 3
        await ctl.run("stop")
    # a clean restart keeps a stopped state and the run counter
    async with running(secure_broker, state_dir, MemoryDataPath()), \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        st = (await ctl.status())["run"]
        assert (st["state"], st["last_run"]) == ("stopped", 3)
        assert (await ctl.run("start"))["run"] == 4
    assert json.loads((state_dir / "state.json").read_text())["last_run"] == 4


async def test_data_path_failure_is_an_error_state(secure_broker: SecureBroker,
                                                   tmp_path: Path) -> None:
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "s", dp), \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        dp.fail_next = "builder unreachable"
        r = await ctl.run("start")
        assert (r["ok"], r["error"], r["state"]) == (False, P.FAILED, "error")
        assert "builder unreachable" in r["reason"]
        st = (await ctl.status())["run"]
        assert st["state"] == "error" and "builder unreachable" in st["error"]


async def test_service_reconnects_after_a_broker_restart(secure_broker: SecureBroker,
                                                         tmp_path: Path) -> None:
    b = secure_broker
    async with running(b, tmp_path / "s", MemoryDataPath()) as svc:
        async with ControlClient(settings(b, "shift")) as ctl:
            assert (await ctl.run("start"))["run"] == 1
        os.kill(b.pid, signal.SIGTERM)
        for _ in range(200):
            if not svc.ready.is_set():
                break
            await asyncio.sleep(0.05)
        assert not svc.ready.is_set()
        binary = require_binary("mosquitto")
        proc = subprocess.Popen([binary, "-c", str(b.workdir / "mosquitto.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            await asyncio.to_thread(wait_for_port, b.port)
            await asyncio.wait_for(svc.ready.wait(), 20)
            async with ControlClient(settings(b, "shift")) as ctl:
                st = (await ctl.status())["run"]
                assert (st["state"], st["run"]["run"]) == ("running", 1)
                assert (await ctl.run("stop"))["state"] == "stopped"
            assert svc.registry.get_sample_value("na64_control_reconnects_total") >= 1
        finally:
            stop_pid(proc)


async def test_request_round_trip_latency(secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Figures: `pytest tests/control -k latency -s` prints them."""
    async with running(secure_broker, tmp_path / "s", MemoryDataPath()), \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        await ctl.run("start")
        loop = asyncio.get_running_loop()
        times = []
        for i in range(100):
            t0 = loop.time()
            r = await ctl.run("pause" if i % 2 == 0 else "resume")
            times.append(loop.time() - t0)
            assert r["ok"]
        times.sort()
        med, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
        print(f"\nrun-command round trip over Mosquitto (QoS 1, fsync'd state): "
              f"median {med * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms")
        # The figure is reported, never asserted (shared machines are noisy). What made it
        # 90 ms before (Nagle + delayed ACK) is guarded structurally instead:
        conf = (Path(__file__).resolve().parents[2] / "deploy/mosquitto/mosquitto.conf").read_text()
        assert "set_tcp_nodelay true" in conf


async def test_retained_command_is_refused(secure_broker: SecureBroker, tmp_path: Path) -> None:
    b = secure_broker
    async with aiomqtt.Client(b.host, b.port, username="expert",
                              password=b.passwords["expert"],
                              protocol=aiomqtt.ProtocolVersion(MQTTv5)) as c:
        await c.publish(P.run_topic("start", "expert"), b'{"id": "stale"}', qos=1, retain=True)
    dp = MemoryDataPath()
    async with running(b, tmp_path / "s", dp) as svc:
        async def refused() -> int:
            return svc.refused("run", P.MALFORMED)
        assert await eventually(refused) == 1
        assert dp.run is None and svc.core.state.state.value == "idle"


async def test_users_cannot_read_each_others_replies(secure_broker: SecureBroker) -> None:
    b = secure_broker

    def cli(user: str) -> aiomqtt.Client:
        return aiomqtt.Client(b.host, b.port, username=user, password=b.passwords[user],
                              protocol=aiomqtt.ProtocolVersion(MQTTv5))

    async with cli("shift") as spy, cli("expert") as owner, cli("runcontrol") as svc:
        await spy.subscribe(f"{P.REPLY}/expert/#", qos=1)
        await owner.subscribe(f"{P.REPLY}/expert/#", qos=1)
        await svc.publish(f"{P.REPLY}/expert/c1", b'{"secret": 1}', qos=1)
        got = await asyncio.wait_for(anext(aiter(owner.messages)), 5)
        assert got.payload == b'{"secret": 1}'
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(aiter(spy.messages)), 0.5)


async def test_deep_nesting_from_the_shift_account_is_refused_and_run_control_lives(
        secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Issue 20: `[` x 5000 + `]` x 5000 (10 kB) published by the shift account on its own
    start topic ended run control with RecursionError while its status still said online."""
    dp = MemoryDataPath()
    async with running(secure_broker, tmp_path / "s", dp) as svc, \
            ControlClient(settings(secure_broker, "shift")) as ctl:
        r = await ctl.request_raw(P.run_topic("start", "shift"), b"[" * 5000 + b"]" * 5000)
        assert (r["ok"], r["error"]) == (False, P.MALFORMED) and "levels deep" in r["reason"]
        assert svc.refused("run", P.MALFORMED) == 1 and dp.run is None
        r = await ctl.run("start")  # and it still serves the next request
        assert r["ok"] and dp.run == r["run"]
