"""Bad input at every service: refused, counted in a metric, the service carries on, and
nothing already accepted is lost (the same run with and without garbage gives the same output).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from rel_helpers import CALIB, GEOM, board_stream, garbage, sample, total

from daq.builder import BuilderConfig, EventBuilder
from daq.builder_service import BuilderService
from daq.inlet import REASONS, Received
from daq.runfile import read_all
from daq.wire import Kind, Message, encode
from monitors.config import MonitorConfig
from monitors.service import MonitorService
from trigger.processor import SliceProcessor
from trigger.worker import TriggerWorker, WorkerConfig

pytestmark = pytest.mark.asyncio
BAD = garbage(120)


def _interleave(good: list[list[bytes]], bad: list[list[bytes]]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    step = max(1, len(good) // len(bad) + 1)
    it = iter(bad)
    for i, g in enumerate(good):
        if i % step == 0:
            out += [f for f in (next(it, None),) if f is not None]
        out.append(g)
    out += list(it)
    return out


def _builder(tag: str) -> tuple[BuilderService, CollectorRegistry]:
    reg = CollectorRegistry()
    cfg = BuilderConfig.parse({"input": f"inproc://{tag}-in", "output": f"inproc://{tag}-out"})
    core = EventBuilder(GEOM, cfg, calibration=CALIB.hash,
                        default_trigger_config=lambda: {"t": 1})
    return BuilderService(core, reg), reg


def _built(svc: BuilderService) -> list[tuple[str, int, int, int]]:
    return [(str(m.kind), m.spill, m.first, m.count) for m in svc.queue]


async def test_builder_counts_garbage_and_builds_the_same() -> None:
    stream = [encode(m) for m in board_stream(2)]
    clean, _ = _builder("clean")
    dirty, reg = _builder("dirty")
    try:
        for f in stream:
            clean._handle(Received(f))
        for f in _interleave(stream, BAD):
            dirty._handle(Received(f))
        assert _built(dirty) == _built(clean)
        assert sum(m.count for m in dirty.queue if m.kind is Kind.SLICE) > 0
        assert total(reg, "na64_builder_decode_errors_total") == len(BAD)
    finally:
        for s in (clean, dirty):
            s.inlet.close()
            s.outlet.close()


async def test_worker_counts_garbage_and_goes_on(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    w = TriggerWorker(WorkerConfig(input="inproc://w-in"), GEOM, CALIB, reg)
    try:
        for f in BAD:
            assert await w._handle(Received(f)) is False
        assert sum(sample(reg, "na64_trigger_refused_total", reason=r)
                   for r in REASONS) == len(BAD)
        marker = Message(kind=Kind.SPILL_START, run=1, spill=0, src="builder",
                         meta={"t0_ns": 0})
        assert await w._handle(Received(encode(marker))) is False
        assert sample(reg, "na64_trigger_markers_total") == 1
    finally:
        w.inlet.close()


async def test_recorder_counts_garbage_and_keeps_every_record(tmp_path: Path) -> None:
    from daq.recorder import RecorderService

    stream = _worker_stream()
    reg = CollectorRegistry()
    svc = RecorderService(tmp_path, reg, listen="inproc://rec-fuzz")
    try:
        for f in _interleave([encode(m) for m in stream], BAD):
            svc._handle(Received(f))
        svc.rec.close()
    finally:
        svc.inlet.close()
    assert total(reg, "na64_recorder_decode_errors_total") == len(BAD)
    msgs, rep = read_all(svc.rec.files[0])
    assert rep.closed_cleanly and not rep.torn
    assert [(m.kind, m.spill, m.first) for m in msgs] == \
        [(m.kind, m.spill, m.first) for m in stream if m.kind is not Kind.END_OF_STREAM]


async def test_monitor_counts_garbage_and_closes_every_spill() -> None:
    stream = _worker_stream(features=True)
    reg = CollectorRegistry()
    mon = MonitorService("inproc://mon-fuzz", config=MonitorConfig(), registry=reg)
    for f in _interleave([encode(m) for m in stream], BAD):
        mon.handle_frames(f)
    assert sum(sample(reg, "na64_monitor_refused_total", reason=r)
               for r in REASONS) == len(BAD)
    assert [s.closed for s in mon.summaries] == ["complete", "complete"]
    want = sum(m.count for m in stream if m.kind is Kind.FEATURES)
    assert sum(s.events for s in mon.summaries) == want


def _worker_stream(*, features: bool = False) -> list[Message]:
    """What one trigger worker sends the recorder (ACCEPTED) or the monitor (FEATURES)."""
    from trigger.processor import Stamper

    core = EventBuilder(GEOM, BuilderConfig(), calibration=CALIB.hash)
    proc = SliceProcessor(GEOM, CALIB)
    stamp = Stamper("trigger-0")
    out: list[Message] = []
    for m in board_stream(2):
        for b in core.feed(m, 0.0):
            if b.kind is Kind.SLICE:
                res = proc.process(b)
                out.append(stamp(res.features if features else res.accepted))
            else:
                out.append(stamp(b))
    for b in core.finish(0.0):
        out.append(stamp(b))
    return out
