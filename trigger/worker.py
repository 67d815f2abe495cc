"""The trigger worker service: PULL built slices, run the kernels, PUSH results.

Accepted events (and markers) go to the recorder, features of every event (and markers) to
each monitor endpoint. In a process of its own a worker runs its kernels on the event
loop's thread: a slice takes a few milliseconds (4096 waveform events: ~5 ms), and the input
keeps arriving meanwhile in ZeroMQ's I/O thread, while handing each slice to a thread and
waking the loop when it is done costs CPU for nothing (docs/performance.md, session 10).
Sharing a loop with other services (`kernels_in_thread`, the demo), it runs them in a
thread (they release the GIL) so the others go on. Kernels are compiled (or loaded from
numba's cache) off the loop when the service starts.
Several workers may PULL from one builder: decisions depend only on the slice (its stamped
configuration, run, spill and event numbers), never on which worker ran it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq.asyncio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import Field

from daq.config import StrictModel
from daq.curve import SocketHook
from daq.geometry import Calibration, Geometry
from daq.inlet import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REASONS,
    Received,
    Refusals,
    ZmqInlet,
    ZmqOutlet,
    drain,
)
from daq.service import Loop, Service
from daq.transport import context
from daq.wire import Kind, Message, encode
from trigger.config import TRIGGER_BITS
from trigger.core import warm_up
from trigger.errors import SliceError
from trigger.processor import MARKERS, SliceProcessor, SliceResult, Stamper

Endpoint = str
_QUIET_S = 0.25  # at stop: the input is drained once nothing has come for this long
_ENDPOINT = r"^(tcp|ipc|inproc)://.+$"


class WorkerConfig(StrictModel):
    """Where a trigger worker connects, and how it sends."""

    input: Endpoint = Field(pattern=_ENDPOINT, max_length=256,
                            description="Builder output endpoint to PULL built slices from.")
    recorder: Endpoint | None = Field(default=None, pattern=_ENDPOINT, max_length=256,
                                      description="Recorder endpoint for ACCEPTED + markers.")
    monitors: tuple[Endpoint, ...] = Field(
        default=(), max_length=16,
        description="Monitor endpoints; each gets FEATURES of every event + markers.")
    index: int = Field(default=0, ge=0, le=255,
                       description="Worker number: the output streams are `trigger-<index>`.")
    output_hwm: int = Field(default=64, ge=1, le=1 << 20,
                            description="Messages queued per output before sends wait.")
    input_hwm: int = Field(default=4, ge=1, le=1 << 20, description=(
        "Built slices queued at the input (ZeroMQ receive high-water mark). Small, so that a "
        "slow worker pushes back on the builder, which bounds and counts what waits (dead "
        "time), instead of ZeroMQ's default of 1000 slices piling up in this process."))
    with_crc: bool = Field(default=True, description="Compute CRC32C of outgoing frames.")
    drain_timeout_s: float = Field(default=5.0, gt=0, le=600,
                                   description="At stop: how long to try sending what is left.")
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1 << 16, le=1 << 40,
                                   description="Largest message the input takes (daq.inlet).")
    kernels_in_thread: bool = Field(default=False, description=(
        "Run the kernels in a thread, for a worker that shares its process and event loop "
        "with other services (the demo's LocalStack): they go on meanwhile. A worker in a "
        "process of its own runs them on its loop, without a hand-off and a wake-up per "
        "slice."))


class TriggerMetrics:
    """The worker's `na64_trigger_*` series on its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("na64_trigger_processed_events", "Events processed by this worker",
                              registry=registry)
        self.kept = Counter("na64_trigger_kept_events", "Events accepted (any bit)",
                            registry=registry)
        self.accepted = Counter("na64_trigger_accepted", "Events with the trigger bit fired",
                                ["type"], registry=registry)
        self.shadow = Counter("na64_trigger_shadow_accepted",
                              "Events the shadow configuration would have fired, per type",
                              ["type"], registry=registry)
        self.slices = Counter("na64_trigger_slices", "Built slices processed", registry=registry)
        self.refused = Counter("na64_trigger_refused", "Messages refused, by reason (those "
                               "of daq.inlet.REASONS at the input, then kind, calibration, "
                               "config, shape, mode)", ["reason"], registry=registry)
        self.markers = Counter("na64_trigger_markers", "Markers forwarded", registry=registry)
        self.seconds = Histogram("na64_trigger_processing_seconds",
                                 "Time to process one built slice",
                                 buckets=(1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3),
                                 registry=registry)
        self.version = Gauge("na64_trigger_config_version",
                             "Version of the trigger configuration last applied",
                             registry=registry)
        self.run = Gauge("na64_trigger_run", "Run number of the last slice", registry=registry)
        self.spill = Gauge("na64_trigger_spill", "Spill number of the last slice",
                           registry=registry)
        self.ready = Gauge("na64_trigger_ready",
                           "1 once the kernels are compiled and the worker takes slices",
                           registry=registry)
        for t in TRIGGER_BITS:
            self.accepted.labels(t)
            self.shadow.labels(t)
        for r in (*REASONS, "calibration", "config", "mode"):
            self.refused.labels(r)

    def record(self, res: SliceResult, msg: Message, seconds: float) -> None:
        self.events.inc(msg.count)
        self.kept.inc(res.kept)
        self.slices.inc()
        for t, n in res.fired.items():
            self.accepted.labels(t).inc(n)
        for t, n in res.shadow_fired.items():
            self.shadow.labels(t).inc(n)
        self.seconds.observe(seconds)
        self.version.set(res.cfg.config.version)
        self.run.set(msg.run)
        self.spill.set(msg.spill)


class TriggerWorker(Service):
    """Connects PULL to the builder and PUSH to recorder and monitors; see module docstring."""

    name = "trigger"

    def __init__(self, config: WorkerConfig, geometry: Geometry, calibration: Calibration,
                 registry: CollectorRegistry, *, ctx: zmq.asyncio.Context | None = None,
                 secure: SocketHook | None = None) -> None:
        super().__init__()
        self.config = config
        self.src = f"trigger-{config.index}"
        self.name = self.src
        self.geometry = geometry
        self.calibration = calibration
        self.processor = SliceProcessor(geometry, calibration)
        self.metrics = TriggerMetrics(registry)
        self.ready = asyncio.Event()
        self.ctx = ctx or context()
        refusals = Refusals(self.src, on_refused=lambda reason, _: self.metrics.refused
                            .labels(reason).inc())
        # CURVE client options (daq.curve) go on before connect
        self.inlet = ZmqInlet(self.ctx, config.input, refusals, bind=False,
                              hwm=config.input_hwm, max_message_bytes=config.max_message_bytes,
                              hook=secure)
        self.outputs: list[tuple[ZmqOutlet, Stamper, bool]] = []  # (outlet, seq, recorder?)
        for ep, is_rec in [(config.recorder, True), *((m, False) for m in config.monitors)]:
            if ep is None:
                continue
            out = ZmqOutlet(self.ctx, ep, hwm=config.output_hwm, hook=secure)
            self.outputs.append((out, Stamper(self.src), is_rec))
        self._deadline: float | None = None

    def loops(self) -> dict[str, Loop]:
        return {"main": self._main}

    def status(self) -> dict[str, Any]:
        """For run control: a worker is ready once its kernels are compiled."""
        return {"ready": self.ready.is_set()}

    async def _main(self) -> None:
        # compile before the first slice, off the loop: the first spill must not be slow
        await asyncio.to_thread(warm_up, self.geometry, self.calibration)
        self.metrics.ready.set(1)
        self.ready.set()
        if self.agent is not None:  # say so now, not at the next heartbeat
            self.agent.notify("ready")
        while not self.stopping.is_set():
            if not await self.inlet.wait(0.1):
                continue
            while (rx := self.inlet.take()) is not None:
                if await self._handle(rx):
                    return
                if self.stopping.is_set():
                    break
        # drain: the builder may still be sending its queue; go on until the input has
        # been quiet for a moment (or the drain deadline passes)
        self._deadline = self._deadline or time.monotonic() + self.config.drain_timeout_s
        await drain(self.inlet, self._handle, quiet_s=_QUIET_S,
                    timeout_s=max(self._deadline - time.monotonic(), 0.0))

    async def _handle(self, rx: Received) -> bool:
        """Process one received message; True when it ended the stream (eos)."""
        msg = self.inlet.refusals.decode(rx)
        if msg is None:
            return False
        if msg.kind in MARKERS:
            self.metrics.markers.inc()
            await self._send(msg, recorder=True, monitors=True)
            return msg.kind is Kind.END_OF_STREAM
        if msg.kind is not Kind.SLICE:
            self.metrics.refused.labels("kind").inc()
            return False
        t0 = time.perf_counter()
        try:
            res = (await asyncio.to_thread(self.processor.process, msg)
                   if self.config.kernels_in_thread else self.processor.process(msg))
        except SliceError as e:
            self.metrics.refused.labels(e.reason).inc()
            return False
        self.metrics.record(res, msg, time.perf_counter() - t0)
        await self._send(res.accepted, recorder=True, monitors=False)
        await self._send(res.features, recorder=False, monitors=True)
        return False

    async def _send(self, msg: Message, *, recorder: bool, monitors: bool) -> None:
        for out, stamp, is_rec in self.outputs:
            if (is_rec and not recorder) or (not is_rec and not monitors):
                continue
            frames = encode(stamp(msg), with_crc=self.config.with_crc)
            if self.stopping.is_set() and self._deadline is None:
                self._deadline = time.monotonic() + self.config.drain_timeout_s
            # stopping: a consumer may be gone; give up at the drain deadline
            await out.send(frames, deadline=self._deadline)

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            self.inlet.close()
            for out, _, _ in self.outputs:
                out.close(self.config.drain_timeout_s)  # let zmq flush what is queued (eos last)


async def run_worker(config: WorkerConfig, *, metrics_port: int | None = None,
                     geometry: Geometry | None = None,
                     calibration: Calibration | None = None) -> CollectorRegistry:
    """Run one worker until its input ends (eos), serving /metrics on `metrics_port`."""
    from daq.geometry import load_calibration, load_geometry
    from daq.metrics import MetricsServer

    geom = geometry or load_geometry()
    cal = calibration or load_calibration(geom)
    registry = CollectorRegistry()
    server = MetricsServer(registry, port=metrics_port) if metrics_port is not None else None
    try:
        async with TriggerWorker(config, geom, cal, registry) as worker:
            await worker.wait()
    finally:
        if server is not None:
            server.close()
    return registry
