"""Assemble services from a StackConfig: one service per process, or all in one (the demo).

This is the one layer that sits above every package (daq, trigger, monitors, simulators);
imports of those packages happen inside the factories so that `daq` itself does not
depend on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from daq.control.datapath import DataPath
from daq.metrics import MetricsServer
from daq.service import Service
from daq.stack import Detector, StackConfig

if TYPE_CHECKING:
    from daq.builder_service import BuilderService
    from daq.recorder import RecorderService
    from monitors.service import MonitorService
    from simulators.service import FrontEnd
    from trigger.worker import TriggerWorker

log = logging.getLogger(__name__)


def mqtt_settings(cfg: StackConfig, service: str | None = None) -> Any:
    """MqttSettings from the topology's broker URL and the NA64_MQTT_* environment.

    A service's own account, NA64_MQTT_<SERVICE>_USERNAME/_PASSWORD (e.g. _BUILDER_), wins
    over the shared one: under `na64daq up` every process gets the same environment, and
    each service publishes its status under its own user name (the ACL's `%u`).
    """
    if cfg.mqtt is None:
        return None
    from daq.control.mqtt import ENV_PASSWORD, ENV_URL, ENV_USER, MqttSettings

    env = dict(os.environ)
    env[ENV_URL] = cfg.mqtt
    if service is not None:
        tag = service.upper()
        own = {k: os.environ.get(k.replace("NA64_MQTT_", f"NA64_MQTT_{tag}_"))
               for k in (ENV_USER, ENV_PASSWORD)}
        if all(own.values()):
            env.update({k: v for k, v in own.items() if v is not None})
    return MqttSettings.from_mapping(env, source="the environment")


def _curve_server(cfg: StackConfig, ctx: Any, registry: CollectorRegistry) -> Any:
    """The builder input's CURVE hook when configured: only listed client keys get in.

    The context's ZAP authenticator starts here (it needs the running event loop); its
    counts are exported on the builder's registry as na64_builder_curve_*_total.
    """
    if not cfg.curve:
        return None
    from daq.curve import CurveAuthenticator, CurveConfig, make_server

    cc = CurveConfig.parse(cfg.curve)
    if not cc.enabled:
        return None
    auth = CurveAuthenticator(ctx, cc.authorized_dir)
    auth.start()
    registry.register(_CurveCollector(auth))
    return lambda sock: make_server(sock, cc)


class _CurveCollector:
    """Exports the authenticator's handshake counts at scrape time."""

    def __init__(self, auth: Any) -> None:
        self.auth = auth

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("na64_builder_curve_refused",
                                  "Producers refused by CURVE (key not allowed)",
                                  value=self.auth.refused)
        yield CounterMetricFamily("na64_builder_curve_accepted",
                                  "Producers admitted by CURVE", value=self.auth.accepted)


class Factory:
    """Builds each service of a topology on a registry passed in."""

    def __init__(self, cfg: StackConfig, *, ctx: Any = None) -> None:
        self.cfg = cfg
        self.det = Detector(cfg)
        self.ctx = ctx

    def frontend(self, registry: CollectorRegistry, *, spills: int | None = None,
                 run: int | None = None, on_emit: Callable[[Any], object] | None = None
                 ) -> FrontEnd:
        from simulators.config import FaultConfig, SimConfig
        from simulators.frontend import FrontEnds
        from simulators.generator import Simulator
        from simulators.service import FrontEnd

        s = self.cfg.simulator
        sim_fields = dict(s.sim)
        if run is not None:
            sim_fields["run"] = run
        sim = Simulator(SimConfig.parse(sim_fields), self.det.geometry, self.det.calibration,
                        FaultConfig.parse(s.faults))
        fe = FrontEnds(sim, spills=spills or s.spills)
        _frontend_metrics(registry, fe)
        return FrontEnd(fe, self.cfg.endpoints.builder_in, pace=s.pace, factor=s.factor,
                        ctx=self.ctx, on_emit=on_emit)

    def builder(self, registry: CollectorRegistry) -> BuilderService:
        from daq.builder import BuilderConfig, EventBuilder
        from daq.builder_service import BuilderService

        fields = {**self.cfg.builder, "input": self.cfg.endpoints.builder_in,
                  "output": self.cfg.endpoints.builder_out}
        if self.cfg.endpoints.builder_in.startswith("inproc://"):
            fields.setdefault("with_crc", False)  # one process: nothing to corrupt in between
        core = EventBuilder(self.det.geometry, BuilderConfig.parse(fields),
                            calibration=self.det.calibration.hash)
        from daq.transport import context

        ctx = self.ctx or context()
        hook = _curve_server(self.cfg, ctx, registry)
        return BuilderService(core, registry, ctx=ctx, input_hook=hook)

    def worker(self, index: int, registry: CollectorRegistry) -> TriggerWorker:
        from trigger.worker import TriggerWorker, WorkerConfig

        e = self.cfg.endpoints
        wc = WorkerConfig(input=e.builder_out, recorder=e.recorder, monitors=(e.monitor,),
                          index=index, with_crc=not e.builder_out.startswith("inproc://"))
        return TriggerWorker(wc, self.det.geometry, self.det.calibration, registry, ctx=self.ctx)

    def recorder(self, registry: CollectorRegistry) -> RecorderService:
        from daq.recorder import RecorderService

        d = Path(self.cfg.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        return RecorderService(d, registry, listen=self.cfg.endpoints.recorder,
                               max_bytes=self.cfg.recorder_max_bytes, ctx=self.ctx)

    def monitor(self, registry: CollectorRegistry) -> MonitorService:
        from monitors.config import MonitorConfig
        from monitors.service import MonitorService
        from monitors.service import MqttSettings as MonitorMqtt

        ms = mqtt_settings(self.cfg, "monitor")
        mqtt = None if ms is None else MonitorMqtt(
            host=ms.host, port=ms.port, username=ms.username,
            password=ms.password.get_secret_value(), client_id=f"na64-monitor-{ms.username}")
        return MonitorService(self.cfg.endpoints.monitor,
                              config=MonitorConfig.parse(self.cfg.monitor), registry=registry,
                              mqtt=mqtt, boards=self.det.geometry.board_names, ctx=self.ctx)


def _frontend_metrics(registry: CollectorRegistry, fe: Any) -> None:
    """The simulator's own series: what it generated, for comparison with what was built."""
    from prometheus_client import Counter

    sent = Counter("na64_frontend_events", "Events sent by the simulated front ends",
                   ["board"], registry=registry)
    orig = fe.run

    def run() -> Any:
        from daq.wire import Kind

        for em in orig():
            if em.msg.kind is Kind.SLICE and em.src != "truth":
                sent.labels(em.src).inc(em.msg.count)
            yield em

    fe.run = run


# --- all services in one process ------------------------------------------------------


@dataclass
class Pipeline:
    """Every service of the data path in one process, each with its own registry."""

    cfg: StackConfig
    metrics: bool = True
    registries: dict[str, CollectorRegistry] = field(default_factory=dict)
    servers: dict[str, MetricsServer] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def _registry(self, name: str, port: int) -> CollectorRegistry:
        reg = self.registries[name] = CollectorRegistry()
        if self.metrics:
            self.servers[name] = MetricsServer(reg, port=port, addr=self.cfg.metrics.addr)
        return reg

    def build(self, factory: Factory, *, run: int | None = None) -> None:
        m = self.cfg.metrics
        # binders first (builder, recorder, monitor), then the sockets that connect
        self.services["builder"] = factory.builder(self._registry("builder", m.builder))
        self.services["recorder"] = factory.recorder(self._registry("recorder", m.recorder))
        self.services["monitor"] = factory.monitor(self._registry("monitor", m.monitor))
        for i in range(self.cfg.workers):
            name = f"trigger-{i}"
            self.services[name] = factory.worker(i, self._registry(name, m.port("trigger", i)))
        self.services["frontend"] = factory.frontend(
            self._registry("frontend", m.frontend), run=run)

    @property
    def monitor(self) -> MonitorService:
        return self.services["monitor"]  # type: ignore[return-value]

    @property
    def recorder(self) -> RecorderService:
        return self.services["recorder"]  # type: ignore[return-value]

    @property
    def builder(self) -> BuilderService:
        return self.services["builder"]  # type: ignore[return-value]

    def workers(self) -> list[TriggerWorker]:
        return [s for n, s in self.services.items() if n.startswith("trigger-")]  # type: ignore[misc]

    async def run(self, stack: contextlib.AsyncExitStack, *,
                  settle_s: float = 30.0, on_tick: Callable[[], Awaitable[None]] | None = None
                  ) -> None:
        """Start everything, wait until the front ends' run has been recorded and monitored.

        The run is over when the builder has ended its stream and the recorder and the
        monitor have closed every spill it announced (or `settle_s` passed since the
        builder ended, after which whatever is still open is counted by them as late).
        """
        for name in ("builder", "recorder", "monitor"):
            await stack.enter_async_context(self.services[name])
        workers = self.workers()
        for w in workers:
            await stack.enter_async_context(w)
        await asyncio.gather(*(w.ready.wait() for w in workers))  # kernels compiled
        fe = await stack.enter_async_context(self.services["frontend"])
        await self._until(fe.wait(), on_tick)
        await self._until(self.builder.wait(), on_tick)
        deadline = time.monotonic() + settle_s
        while not self.settled() and time.monotonic() < deadline:
            await self._until(asyncio.sleep(0.05), on_tick)
        for s in self.services.values():
            s.stop()

    async def _until(self, aw: Awaitable[Any], on_tick: Callable[[], Awaitable[None]] | None
                     ) -> None:
        task = asyncio.ensure_future(aw)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if on_tick is not None:
                    await on_tick()
            task.result()
        finally:
            task.cancel()

    def settled(self) -> bool:
        """The recorder closed the run file and the monitor has no open spill."""
        rec = self.recorder.rec
        mon = self.monitor
        return (rec.writer is None and bool(rec.files)
                and all(a.open_spills == 0 for a in mon.analyses.values()))

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.servers.clear()


# --- run control over the real data path ------------------------------------------------


class PipelineDataPath(DataPath):
    """Run control's DataPath over the real services, in one process (the demo with MQTT).

    Each run gets a fresh Pipeline (builder, workers, recorder, monitor, front ends) whose
    builder carries the run's configuration snapshot into `run_start` (so into the run
    file) and reports when a trigger configuration becomes active, and from which spill.
    `stop_run` ends the front ends' stream and returns once everything in flight is
    recorded and monitored. `pause` holds the front ends between spills.
    """

    def __init__(self, cfg: StackConfig, *, on_pipeline: Callable[[Pipeline], None] | None = None
                 ) -> None:
        from daq.control.core import Activation

        super().__init__()
        self.cfg = cfg
        self.on_pipeline = on_pipeline
        self.pipe: Pipeline | None = None
        self._task: asyncio.Task[None] | None = None
        self._activations: asyncio.Queue[Activation] = asyncio.Queue()
        self._pending: tuple[dict[str, Any], str] | None = None
        self._activation_type = Activation

    async def start_run(self, run: int, snapshot: Any) -> None:
        from daq.errors import StateError
        from daq.transport import context

        if self._task is not None and not self._task.done():
            raise StateError("running", "start_run")
        pipe = Pipeline(self.cfg)
        pipe.build(Factory(self.cfg, ctx=context()), run=run)
        core = pipe.builder.builder
        core.run_config = dict(snapshot)
        loop = asyncio.get_running_loop()

        def activated(config: dict[str, Any], who: str, run_: int, spill: int) -> None:
            loop.call_soon(self._activations.put_nowait,
                           self._activation_type(config, who, time.time(), run_, spill))

        core.on_activate = activated
        if self._pending is not None:
            core.set_trigger_config(*self._pending)
            self._pending = None
        self.pipe = pipe
        if self.on_pipeline is not None:
            self.on_pipeline(pipe)
        self._task = asyncio.create_task(self._run(pipe), name=f"run-{run}")

    async def _run(self, pipe: Pipeline) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                await pipe.run(stack)
        finally:
            pipe.close()

    async def stop_run(self) -> dict[str, int]:
        from daq.errors import StateError

        if self.pipe is None or self._task is None:
            raise StateError("idle", "stop_run")
        self.pipe.services["frontend"].stop_after_spill()  # type: ignore[attr-defined]
        await self._task
        sums = self.pipe.monitor.summaries
        return {"events": sum(s.events for s in sums), "spills": len(sums)}

    async def pause(self) -> None:
        if self.pipe is not None:
            self.pipe.services["frontend"].paused = True  # type: ignore[attr-defined]

    async def resume(self) -> None:
        self.resume_frontend()

    def resume_frontend(self) -> None:
        if self.pipe is not None:
            self.pipe.services["frontend"].paused = False  # type: ignore[attr-defined]

    async def set_trigger_config(self, config: Any, who: str) -> None:
        running = self._task is not None and not self._task.done() and self.pipe is not None
        if running:
            assert self.pipe is not None
            self.pipe.builder.builder.set_trigger_config(dict(config), who)
        else:  # no run open: active at once, and the next run starts with it
            self._pending = (dict(config), who)
            self._activations.put_nowait(self._activation_type(dict(config), who, time.time(),
                                                               None, None))

    async def activation(self) -> Any:
        return await self._activations.get()
