"""Beam at three times what the system can take: memory stays bounded, dead time and shed
events are counted and shown per spill, every event is accounted for, and the system
recovers (no more dead time) once the beam drops.

The standing system under run control (daq.app.LocalStack), with the front ends in a
process of their own (`na64daq serve frontend`, as under `na64daq up`): a beam that keeps
its schedule however busy the services under test are. In-process, the simulator shares the
event loop and the GIL with them; under load it fell behind its schedule and then sent the
spills it owed in one burst, which no beam does."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from rel_helpers import stack_config, vm_rss

from daq.app import LocalStack
from daq.service import Loop, Service
from daq.stack import StackConfig
from tests.conftest import free_tcp_ports
from trigger.processor import SliceProcessor

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.multiprocess]

WORKER_S_PER_EVENT = 50e-6  # the system's capacity: 2 workers x 20 kHz = 40 kHz
SPILL_EVENTS = 24_000  # per 0.2 s spill at pace 1: 120 kHz = 3 x capacity at ramp 0
SPILLS = 10
MAX_PENDING = 2048
SLICE = 256
RSS_MARGIN = 150 << 20  # the run's own growth allowed beyond what it holds at spill 1


class ServedFrontEnd(Service):
    """`na64daq serve frontend --config F`: the standing front ends as their own process,
    on run control's command channel like every other service. `stop()` is SIGTERM: the
    process ends every board's stream (eos) and exits 0."""

    name = "frontend"

    def __init__(self, config: Path) -> None:
        super().__init__()
        self.argv = [sys.executable, "-m", "daq.cli", "serve", "frontend", "--config",
                     str(config)]
        self.returncode: int | None = None

    def loops(self) -> dict[str, Loop]:
        return {"process": self._process}

    async def _process(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        done = asyncio.ensure_future(proc.communicate())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                _, err = await asyncio.wait_for(done, 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                err = b"(killed: no exit within 30 s of SIGTERM)"
        self.returncode = proc.returncode
        if proc.returncode != 0:
            raise RuntimeError(f"front ends exited {proc.returncode}: {err.decode()[-2000:]}")


def _topology(tmp: Path) -> tuple[StackConfig, Path]:
    """In-process transports, except where the front-end process connects: the builder's
    input and run control's command channel (TCP, fixed free ports)."""
    # intensity ramps down: 3x, 2.4x, 1.8x, 1.2x, 0.6x, then 1 % (the beam dropped)
    cfg = stack_config(tmp, "overload", spills=SPILLS, workers=2, pace="factor", factor=1.0,
                       sim={"intensity": SPILL_EVENTS, "generated_s": 0.2,
                            "slice_events": SLICE, "seed": 9, "spill_length_s": 0.2,
                            "spill_period_s": 0.2},
                       faults={"ramp": -0.2},
                       builder={"max_pending_events": MAX_PENDING, "shed_after_s": 0.1,
                                "output_hwm": 2})
    p = free_tcp_ports(3)
    cfg = cfg.model_copy(update={
        "endpoints": cfg.endpoints.model_copy(update={
            "builder_in": f"tcp://127.0.0.1:{p[0]}", "control": f"tcp://127.0.0.1:{p[1]}"}),
        "metrics": cfg.metrics.model_copy(update={"frontend": p[2]})})
    path = tmp / "topology.toml"
    path.write_text(tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    return cfg, path


async def test_three_times_capacity_sheds_counted_and_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = SliceProcessor.process

    def slow(self: SliceProcessor, msg: Any) -> Any:
        time.sleep(msg.count * WORKER_S_PER_EVENT)  # in the worker's thread, like a kernel
        return real(self, msg)

    monkeypatch.setattr(SliceProcessor, "process", slow)
    cfg, topology = _topology(tmp_path)
    stack = LocalStack(cfg, metrics=False)
    stack.build()
    beam = stack.services["frontend"] = ServedFrontEnd(topology)
    queued: list[int] = []
    pending: list[int] = []
    rss: list[int] = []

    async def sampler() -> None:
        while True:
            b = stack.builder
            queued.append(b.queued_events)
            pending.append(b.builder.pending_events)
            rss.append(vm_rss())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(sampler())
    try:
        async with stack:
            record = await asyncio.wait_for(stack.take_run(spills=SPILLS), 120)
            run = stack.run
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert beam.returncode == 0  # the front-end process ended its streams and exited
    sums = sorted((s for s in stack.monitor.summaries if s.run == run), key=lambda s: s.spill)
    st = stack.builder.builder.stats["live"]
    print("overload", [(s.spill, s.scalers["beam"], s.events, s.shed,
                        round(s.live_time_ratio, 3)) for s in sums],
          "max queued", max(queued), "max pending", max(pending),
          "rss MiB", rss[len(rss) // 10] >> 20, max(rss) >> 20,
          "backpressure s", round(stack.builder.backpressure_s, 2))
    # the front ends ended the run after its spills; run control stopped it, drained
    assert record["run"] == run and record["spills"] == SPILLS == len(sums), record
    assert "max_spills" in record["stop_reason"], record
    assert not +st.refused  # every record was of the run run control opened
    # overloaded: dead time counted by the builder and shown per spill by the monitors
    hot = sums[:3]
    assert st.shed > 0 and all(s.shed > 0 for s in hot)
    assert sum(s.events for s in hot) / sum(s.events + s.shed for s in hot) < 0.9
    assert st.shed == sum(s.shed for s in sums)
    # every event accounted for: built + shed = what the BEAM board announced, per spill
    for s in sums:
        assert s.closed == "complete"
        assert s.events + s.shed == s.scalers["beam"], s.spill
    assert record["events"] == sum(s.events for s in sums)
    assert stack.builder.backpressure_s > 0
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
