"""Stopping a run drains everything in flight: zero events left in any queue, and every
event the front ends sent is built, processed, monitored and (if accepted) recorded."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import stack_config

from daq.app import Factory, Pipeline
from daq.runfile import read_all
from daq.transport import context
from daq.wire import Kind

pytestmark = pytest.mark.asyncio


async def _run_stopped_mid_spill(tmp_path: Path, *, stop_spill: int) -> tuple[Pipeline, dict]:
    cfg = stack_config(tmp_path, f"drain{stop_spill}", spills=20, workers=2,
                       sim={"generated_s": 0.01, "slice_events": 512, "seed": 5})
    pipe = Pipeline(cfg, metrics=False)
    sent: dict[str, Any] = {"events": 0, "slices_in_stop_spill": 0}

    def on_emit(em: Any) -> None:
        if em.src == "BEAM" and em.msg.kind is Kind.SLICE:
            sent["events"] += em.msg.count
            if em.msg.spill == stop_spill:
                sent["slices_in_stop_spill"] += 1
                if sent["slices_in_stop_spill"] == 3:  # the middle of the spill
                    pipe.services["frontend"].stop()

    pipe.build(Factory(cfg, ctx=context()))
    pipe.services["frontend"].on_emit = on_emit  # type: ignore[attr-defined]
    async with contextlib.AsyncExitStack() as stack:
        await pipe.run(stack, settle_s=20)
        for s in pipe.services.values():
            await s.wait()
    return pipe, sent


async def test_stop_mid_spill_leaves_nothing_in_flight(tmp_path: Path) -> None:
    pipe, sent = await _run_stopped_mid_spill(tmp_path, stop_spill=2)
    b = pipe.builder
    # builder: nothing partly built, nothing queued, nothing dropped at stop
    assert b.builder.pending_events == 0 and b.queued_events == 0 and not b.queue
    assert b.dropped_at_stop == 0
    st = b.builder.stats["live"]
    assert st.events == sent["events"] and st.shed == 0
    # workers: every built event processed (the one with eos and the ones stopped)
    processed = sum(w.metrics.events._value.get() for w in pipe.workers())
    assert processed == st.events
    # recorder: file closed, no spill held back; every accepted event is in the file
    rec = pipe.recorder.rec
    assert rec.writer is None and not rec._spills and rec.incomplete_spills == 0
    kept = sum(w.metrics.kept._value.get() for w in pipe.workers())
    msgs, report = read_all(rec.files[0])
    assert report.closed_cleanly
    assert sum(m.count for m in msgs if m.kind is Kind.ACCEPTED) == kept
    assert [m.kind for m in msgs][-1] is Kind.RUN_STOP
    # monitor: no open spill; the spill cut short is there with what was sent of it
    mon = pipe.monitor
    assert all(a.open_spills == 0 for a in mon.analyses.values())
    assert [s.spill for s in mon.summaries] == [0, 1, 2]
    assert all(s.closed == "complete" for s in mon.summaries)
    assert sum(s.events for s in mon.summaries) == sent["events"]


@pytest.mark.slow
async def test_every_service_drains_when_stopped_together(tmp_path: Path) -> None:
    """SIGTERM to everything at once (what `up` does at the end): queues empty too."""
    cfg = stack_config(tmp_path, "drainall", spills=8, workers=2,
                       sim={"generated_s": 0.03, "slice_events": 512, "seed": 6})
    pipe = Pipeline(cfg, metrics=False)
    pipe.build(Factory(cfg, ctx=context()))
    services = pipe.services
    async with contextlib.AsyncExitStack() as stack:
        for name in ("builder", "recorder", "monitor"):
            await stack.enter_async_context(services[name])
        for w in pipe.workers():
            await stack.enter_async_context(w)
        await asyncio.gather(*(w.ready.wait() for w in pipe.workers()))
        fe = await stack.enter_async_context(services["frontend"])
        await fe.wait()  # the front ends are done; most of the run is still in flight
        for s in services.values():
            s.stop()
        async with asyncio.timeout(60):  # a worker sending to a consumer that left hung here
            for s in services.values():
                await s.wait()
    b = pipe.builder
    assert b.builder.pending_events == 0 and b.queued_events == 0 and b.dropped_at_stop == 0
    processed = sum(w.metrics.events._value.get() for w in pipe.workers())
    assert processed == b.builder.stats["live"].events
    assert pipe.recorder.rec.writer is None and not pipe.recorder.rec._spills
    assert sum(s.events for s in pipe.monitor.summaries) == processed
