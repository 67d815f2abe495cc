"""Stopping a run drains everything in flight: run control answers a stop only once zero
events are left in any queue, and every event the front ends sent is built, processed,
monitored and (if accepted) recorded. Services stopped all at once drain too."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import stack_config

from daq.app import LocalStack
from daq.runfile import read_all
from daq.wire import Kind
from trigger.processor import SliceProcessor

pytestmark = pytest.mark.asyncio

WORKER_S_PER_EVENT = 20e-6  # two workers: 100 k events/s, slower than the beam at pace max
MAX_PENDING = 20_000  # built events the builder holds for the workers (then backpressure)


def _workers(stack: LocalStack) -> list[Any]:
    return [stack.services[n] for n in stack.worker_names()]


def _processed(stack: LocalStack) -> int:
    return int(sum(w.metrics.events._value.get() for w in _workers(stack)))


async def test_a_stop_mid_spill_is_answered_once_nothing_is_in_flight(tmp_path: Path) -> None:
    stop_spill = 2
    cfg = stack_config(tmp_path, "drain", spills=20, workers=2,
                       sim={"generated_s": 0.01, "slice_events": 512, "seed": 5})
    stack = LocalStack(cfg, metrics=False)
    stack.build()
    sent = {"events": 0, "slices_in_stop_spill": 0}
    asked = asyncio.Event()

    def on_emit(em: Any) -> None:
        if em.src == "BEAM" and em.msg.kind is Kind.SLICE:
            sent["events"] += em.msg.count
            if em.msg.spill == stop_spill:
                sent["slices_in_stop_spill"] += 1
                if sent["slices_in_stop_spill"] == 3:  # the middle of the spill
                    # what run control's stop does to the front ends, at this very moment
                    # (the command itself follows; it would reach them a few slices later)
                    stack.frontend.stop_after_spill()
                    asked.set()

    stack.frontend.on_emit = on_emit
    async with stack:
        await stack.start_run()  # no max_spills: the run goes on until it is stopped
        run = stack.run
        async with asyncio.timeout(60):
            await asyncio.wait_for(asked.wait(), 60)
            reply = await stack.stop_run("stopped mid-spill")
        assert reply["ok"] and reply["state"] == "stopped", reply
        # the spill under way was completed, nothing after it was sent
        assert (reply["run"], reply["spills"], reply["events"]) == (run, 3, sent["events"])
        # answered: the builder has nothing partly built, queued or dropped
        b = stack.builder
        assert b.builder.pending_events == 0 and b.queued_events == 0 and not b.queue
        assert b.dropped_at_stop == 0
        st = b.builder.stats["live"]
        assert st.events == sent["events"] and st.shed == 0
        assert not +st.refused  # every record was of the run run control opened
        # workers: every built event processed
        assert _processed(stack) == st.events
        # recorder: file closed, no spill held back; every accepted event is in the file
        rec = stack.recorder.rec
        assert rec.writer is None and not rec._spills and rec.incomplete_spills == 0
        kept = sum(w.metrics.kept._value.get() for w in _workers(stack))
        [path] = rec.files
        assert path.name == f"run{run:06d}.na64"
        msgs, report = read_all(path)
        assert report.closed_cleanly
        assert sorted(report.spills) == [0, 1, 2]
        assert all(sp.complete for sp in report.spills.values())
        assert sum(m.count for m in msgs if m.kind is Kind.ACCEPTED) == kept
        assert [m.kind for m in msgs][-1] is Kind.RUN_STOP
        # monitor: no open spill; the spill the stop came in is there, whole
        mon = stack.monitor
        assert all(a.open_spills == 0 for a in mon.analyses.values())
        assert [s.spill for s in mon.summaries] == [0, 1, 2]
        assert all(s.closed == "complete" for s in mon.summaries)
        assert sum(s.events for s in mon.summaries) == sent["events"]
        assert mon.run_summaries[-1]["run"] == run
        # every service was told: the run is closed everywhere
        phases = {n: s.lifecycle.phase.value for n, s in stack.services.items()}
        assert set(phases.values()) == {"configured"}, phases
    # the shutdown after the run drained every service: none had to be cancelled
    assert not [n for n, s in stack.services.items() if _cancelled(s)]


def _cancelled(svc: Any) -> bool:
    runner = svc._runner
    return runner is None or not runner.done() or runner.cancelled() \
        or runner.exception() is not None


@pytest.mark.slow
async def test_every_service_drains_when_stopped_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service asked to stop at once, in the middle of a run (a machine going down,
    not `up`, which stops run control first and then one stage after the other): each
    drains what it holds, none hangs on a consumer that left."""
    real = SliceProcessor.process
    held = threading.Event()  # set: the workers work again (until then, a backlog builds)

    def slow(self: SliceProcessor, msg: Any) -> Any:
        held.wait(60)  # in the worker's thread, like a kernel: no dependence on speeds
        time.sleep(msg.count * WORKER_S_PER_EVENT)
        return real(self, msg)

    monkeypatch.setattr(SliceProcessor, "process", slow)
    cfg = stack_config(tmp_path, "drainall", spills=100, workers=2,
                       sim={"generated_s": 0.03, "slice_events": 512, "seed": 6},
                       builder={"max_pending_events": MAX_PENDING, "shed_after_s": 600})
    stack = LocalStack(cfg, metrics=False)
    stack.build()
    services = stack.services
    async with stack:
        await stack.start_run()  # until stopped
        b = stack.builder
        async with asyncio.timeout(60):  # the workers are held: a backlog builds up
            while b.builder.stats["live"].events - _processed(stack) <= 10 * 512:
                await asyncio.sleep(0.05)
        for s in services.values():
            s.stop()
        held.set()  # what is held must now drain, service by service
        async with asyncio.timeout(60):  # a worker sending to a consumer that left hung here
            for s in services.values():
                await s.wait()
        assert b.builder.pending_events == 0 and b.queued_events == 0
        assert b.dropped_at_stop == 0
        processed = _processed(stack)
        assert processed == b.builder.stats["live"].events > 0
        assert stack.recorder.rec.writer is None and not stack.recorder.rec._spills
        assert sum(s.events for s in stack.monitor.summaries) == processed
