"""Beam at three times what the system can take: memory stays bounded, dead time and shed
events are counted and shown per spill, every event is accounted for, and the system
recovers (no more dead time) once the beam drops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import ProcessFrontEnds, stack_config, vm_rss

from daq.app import Factory, Pipeline
from daq.transport import context
from trigger.processor import SliceProcessor

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.multiprocess]

WORKER_S_PER_EVENT = 50e-6  # the system's capacity: 2 workers x 20 kHz = 40 kHz
SPILL_EVENTS = 24_000  # per 0.2 s spill at pace 1: 120 kHz = 3 x capacity at ramp 0
MAX_PENDING = 2048
SLICE = 256
RSS_MARGIN = 150 << 20  # the run's own growth allowed beyond what it holds at spill 1


async def test_three_times_capacity_sheds_counted_and_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = SliceProcessor.process

    def slow(self: SliceProcessor, msg: Any) -> Any:
        time.sleep(msg.count * WORKER_S_PER_EVENT)  # in the worker's thread, like a kernel
        return real(self, msg)

    monkeypatch.setattr(SliceProcessor, "process", slow)
    # intensity ramps down: 3x, 2.4x, 1.8x, 1.2x, 0.6x, then 1 % (the beam dropped)
    cfg = stack_config(tmp_path, "overload", spills=10, workers=2, sim={}, builder={
        "max_pending_events": MAX_PENDING, "shed_after_s": 0.1, "output_hwm": 2})
    # the beam from its own process, on TCP: it keeps its schedule however busy this one is
    cfg = cfg.model_copy(update={"endpoints": cfg.endpoints.model_copy(
        update={"builder_in": "tcp://127.0.0.1:0"})})
    pipe = Pipeline(cfg, metrics=False)
    pipe.build(Factory(cfg, ctx=context()))
    pipe.services["frontend"] = ProcessFrontEnds(pipe.builder.input_endpoint, [
        "--spills", "10", "--pace", "factor", "--factor", "1", "--intensity",
        str(SPILL_EVENTS), "--generated-s", "0.2", "--slice-events", str(SLICE),
        "--seed", "9", "--fault-ramp", "-0.2", "--set", "spill_length_s=0.2",
        "--set", "spill_period_s=0.2"])
    queued: list[int] = []
    pending: list[int] = []
    rss: list[int] = []

    async def sampler() -> None:
        while True:
            b = pipe.builder
            queued.append(b.queued_events)
            pending.append(b.builder.pending_events)
            rss.append(vm_rss())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(sampler())
    try:
        async with contextlib.AsyncExitStack() as stack:
            await pipe.run(stack, settle_s=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    sums = sorted(pipe.monitor.summaries, key=lambda s: s.spill)
    st = pipe.builder.builder.stats["live"]
    print("overload", [(s.spill, s.scalers["beam"], s.events, s.shed,
                        round(s.live_time_ratio, 3)) for s in sums],
          "max queued", max(queued), "max pending", max(pending),
          "rss MiB", rss[len(rss) // 10] >> 20, max(rss) >> 20,
          "backpressure s", round(pipe.builder.backpressure_s, 2))
    # overloaded: dead time counted by the builder and shown per spill by the monitors
    hot = sums[:3]
    assert st.shed > 0 and all(s.shed > 0 for s in hot)
    assert sum(s.events for s in hot) / sum(s.events + s.shed for s in hot) < 0.9
    assert st.shed == sum(s.shed for s in sums)
    # every event accounted for: built + shed = what the BEAM board announced, per spill
    for s in sums:
        assert s.closed == "complete"
        assert s.events + s.shed == s.scalers["beam"], s.spill
    assert pipe.builder.backpressure_s > 0
    # memory bounded: built slices waiting for the workers stop the input at the bound (one
    # slice may complete past it); partly built slices are bounded apart by the same figure
    # (the boards' TCP streams are not in step: fragments of several slices can wait for a
    # late board). The process does not grow with the backlog.
    assert max(queued) <= MAX_PENDING + SLICE
    assert max(pending) <= MAX_PENDING + SLICE
    assert max(rss) - rss[len(rss) // 10] < RSS_MARGIN
    # recovery: the beam dropped below capacity; the last spills have no dead time
    assert [s.shed for s in sums[-3:]] == [0, 0, 0]
    assert all(s.live_time_ratio == 1.0 for s in sums[-3:])
