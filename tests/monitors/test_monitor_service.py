"""MonitorService end to end: real ZeroMQ PUSH, real /metrics over HTTP, real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request

import aiomqtt
import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio
from monitor_synth import spill_messages
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daq.metrics import MetricsServer
from daq.mqtt import MqttSettings, status_topic
from daq.transport import asend, context
from daq.wire import Kind, Message, encode
from monitors.config import AlarmConfig, Band, MonitorConfig
from monitors.service import SPILL_TOPIC, MonitorService
from tests.conftest import Broker, require_binary


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name}{labels} not in the scrape")


async def _until(cond: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def _stream(run: int = 7) -> list[Message]:
    rng = np.random.default_rng(5)
    seq: dict[str, int] = {"trigger-0": 0}
    out = [Message(Kind.RUN_START, run=run, src="trigger-0", seq=0)]
    out += spill_messages(rng, run=run, spill=1, slices=3, slice_events=500, seq0=seq)[0]
    # spill 2: heavy pileup in the VETO gate -> efficiency ~ exp(-0.4) = 0.67, alarm
    out += spill_messages(rng, run=run, spill=2, slices=3, slice_events=500, seq0=seq,
                          lam_veto=0.4)[0]
    return out


@pytest.mark.asyncio
@pytest.mark.mosquitto
@pytest.mark.prometheus
async def test_service_scrape_promtool_and_mqtt(mosquitto: Broker) -> None:
    promtool = require_binary("promtool")
    reg = CollectorRegistry()
    server = MetricsServer(reg)
    cfg = MonitorConfig(alarms=AlarmConfig(veto_efficiency=Band(low=0.9), min_sample=100))
    try:
        svc = MonitorService("tcp://127.0.0.1:0", config=cfg, registry=reg, tick_s=0.05,
                             mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port))
        async with svc:
            push = context().socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(svc.bound)
            try:
                await push.send_multipart([b"not a message"])
                for m in _stream():
                    await asend(push, m)
                await _until(lambda: len(svc.summaries) == 2)
            finally:
                push.close()
            svc.stop()
            await svc.wait()
        text = await asyncio.to_thread(_scrape, server.url)
    finally:
        server.close()

    assert _value(text, "na64_spill_number", source="live") == 2
    assert _value(text, "na64_run_number", source="live") == 7
    assert _value(text, "na64_events_total", source="live") == 3000
    assert _value(text, "na64_monitor_refused_total", reason="header") == 1
    assert _value(text, "na64_alarm_active", source="live", alarm="veto_efficiency_low") == 1
    eff = _value(text, "na64_efficiency_ratio", source="live", detector="veto", bound="value")
    assert eff == pytest.approx(svc.summaries[1].veto_efficiency.value)
    assert _value(text, "na64_monitor_messages_total", kind="features") == 6
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == b"", (r.stdout + r.stderr).decode()

    retained: dict[str, bytes] = {}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="t-sub") as sub:
        await sub.subscribe("na64/#", qos=1)
        with pytest.raises(TimeoutError):  # retained messages arrive at once; then silence
            async with asyncio.timeout(1.0):
                async for m in sub.messages:
                    assert m.retain
                    retained[str(m.topic)] = bytes(m.payload)  # type: ignore[arg-type]
    spill = json.loads(retained[SPILL_TOPIC])
    assert spill["spill"] == 2 and spill["run"] == 7 and spill["closed"] == "complete"
    alarm = json.loads(retained["na64/alarms/veto_efficiency_low"])
    assert alarm["state"] == "raised" and alarm["spill"] == 2 and alarm["band"]["low"] == 0.9
    assert alarm["value"] < 0.8
    status = json.loads(retained[status_topic("monitor")])  # the same document as every service's
    assert status["status"] == "offline" and status["service"] == "monitor"
    assert svc.published >= 2  # spill summaries coalesce per topic while the broker lags


@pytest.mark.asyncio
async def test_service_without_broker_raises_no_spill_on_its_clock() -> None:
    now = [1000.0]
    reg = CollectorRegistry()
    cfg = MonitorConfig(alarms=AlarmConfig(no_spill_s=30))
    ctx = zmq.asyncio.Context()
    try:
        svc = MonitorService("inproc://monitor-test", config=cfg, registry=reg,
                             clock=lambda: now[0], tick_s=0.02, ctx=ctx)
        async with svc:
            push = ctx.socket(zmq.PUSH)
            push.connect("inproc://monitor-test")
            await asend(push, Message(Kind.RUN_START, run=3, src="trigger-0"))
            await _until(lambda: svc.run_open["live"])
            assert not svc.alarms["live"].raised["no_spill"]
            now[0] += 31
            await _until(lambda: svc.alarms["live"].raised["no_spill"])
            await asend(push, Message(Kind.RUN_STOP, run=3, src="trigger-0", seq=1,
                                      meta={"reason": "end"}))
            await _until(lambda: not svc.alarms["live"].raised["no_spill"])
            push.close(linger=0)
            svc.stop()
            await svc.wait()
        got = reg.get_sample_value("na64_alarm_active", {"source": "live", "alarm": "no_spill"})
        assert got == 0.0
        assert reg.get_sample_value("na64_monitor_messages_total", {"kind": "run_stop"}) == 1
    finally:
        ctx.term()


@pytest.mark.asyncio
async def test_service_refuses_bad_input_and_follows_new_runs() -> None:
    reg = CollectorRegistry()
    ctx = zmq.asyncio.Context()
    try:
        svc = MonitorService("inproc://monitor-bad", config=MonitorConfig(), registry=reg,
                             ctx=ctx)
        rng = np.random.default_rng(9)
        run1, _ = spill_messages(rng, run=1, spill=1, slices=1, slice_events=50)
        run1[-1].meta["incomplete"] = {"HCAL": 2}
        # the same spill_end with junk counts: refused whole at decode, none of it used
        junk = encode(run1[-1])
        head = msgpack.unpackb(junk[0])
        head["meta"]["incomplete"] = {"VETO": -5, "ECAL": True, "HCAL": 7}
        junk[0] = msgpack.packb(head)
        bad = Message(Kind.FEATURES, run=1, spill=2, seq=50, src="trigger-1", count=1,
                      arrays={"e_ecal": np.zeros(1, np.float32)}, meta={"slice_index": 0})
        # the first message of run 2 overtakes its run_start (another worker)
        run2, _ = spill_messages(rng, run=2, spill=1, slices=1, slice_events=50,
                                 seq0={"trigger-0": 10})
        closed = []
        for frames in [*map(encode, run1[:-1]), junk, *map(encode, [run1[-1], bad, *run2])]:
            closed += svc.handle_frames(frames)
        closed += svc.handle_frames([b"\x93garbage"])
        assert [(s.run, s.spill) for s in closed] == [(1, 1), (2, 1)]
        assert closed[0].incomplete_by_board == {"HCAL": 2}
        assert reg.get_sample_value("na64_monitor_refused_total", {"reason": "arrays"}) == 1
        assert reg.get_sample_value("na64_monitor_refused_total", {"reason": "header"}) == 1
        assert reg.get_sample_value("na64_monitor_refused_total", {"reason": "meta"}) == 1
        assert reg.get_sample_value("na64_run_number", {"source": "live"}) == 2
        assert reg.get_sample_value("na64_incomplete_events_total",
                                    {"source": "live", "board": "HCAL"}) == 2
    finally:
        ctx.term()


@pytest.mark.asyncio
async def test_service_runs_and_stops_while_the_broker_is_unreachable() -> None:
    from tests.conftest import free_tcp_port

    reg = CollectorRegistry()
    ctx = zmq.asyncio.Context()
    try:
        svc = MonitorService("inproc://monitor-nobroker", config=MonitorConfig(), registry=reg,
                             ctx=ctx, tick_s=0.02,
                             mqtt=MqttSettings(port=free_tcp_port()))
        async with svc:
            push = ctx.socket(zmq.PUSH)
            push.connect("inproc://monitor-nobroker")
            msgs, _ = spill_messages(np.random.default_rng(2), slices=2, slice_events=100)
            for m in msgs:
                await asend(push, m)
            await _until(lambda: len(svc.summaries) == 1)
            await asyncio.sleep(0.3)  # a few failed connection attempts
            push.close(linger=0)
            svc.stop()
            async with asyncio.timeout(10):
                await svc.wait()
        assert svc.published == 0
        assert reg.get_sample_value("na64_monitor_mqtt_outbox_messages") == 1
        assert reg.get_sample_value("na64_spills_total",
                                    {"source": "live", "closed": "complete"}) == 1
    finally:
        ctx.term()
