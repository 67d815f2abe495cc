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
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from daq.errors import ServiceError
from daq.metrics import MetricsServer
from daq.service import Service
from daq.stack import Detector, StackConfig

if TYPE_CHECKING:
    from daq.builder_service import BuilderService
    from daq.lifecycle import RunContext
    from daq.recorder import RecorderService
    from monitors.service import MonitorService
    from simulators.frontend import FrontEnds
    from simulators.service import FrontEnd
    from trigger.worker import TriggerWorker

log = logging.getLogger(__name__)


#: the broker `na64daq up` started for a topology that names none: its URL, handed to the
#: services it launches (their accounts come in NA64_MQTT_<SERVICE>_USERNAME/_PASSWORD)
UP_BROKER_ENV = "NA64_UP_MQTT_URL"


def mqtt_settings(cfg: StackConfig, service: str | None = None) -> Any:
    """MqttSettings from the topology's broker URL (or that of `up`'s own broker) and the
    NA64_MQTT_* environment; None when there is no broker.

    A service's own account, NA64_MQTT_<SERVICE>_USERNAME/_PASSWORD (e.g. _BUILDER_), wins
    over the shared one: under `na64daq up` every process gets the same environment, and
    each service publishes its status under its own user name (the ACL's `%u`).
    """
    url = cfg.mqtt or os.environ.get(UP_BROKER_ENV)
    if url is None:
        return None
    from daq.control.mqtt import ENV_PASSWORD, ENV_URL, ENV_USER, MqttSettings

    env = dict(os.environ)
    env[ENV_URL] = url
    if service is not None:
        tag = service.upper()
        own = {k: os.environ.get(k.replace("NA64_MQTT_", f"NA64_MQTT_{tag}_"))
               for k in (ENV_USER, ENV_PASSWORD)}
        if all(own.values()):
            env.update({k: v for k, v in own.items() if v is not None})
    return MqttSettings.from_mapping(env, source="the environment")


def _curve_server(cfg: StackConfig, ctx: Any, registry: CollectorRegistry
                  ) -> tuple[Any, Any]:
    """The builder input's CURVE hook when configured: only listed client keys get in.

    The context's ZAP authenticator starts here (it needs the running event loop); its
    counts are exported on the builder's registry as na64_builder_curve_*_total.
    """
    if not cfg.curve:
        return None, None
    from daq.curve import CurveAuthenticator, CurveConfig, make_server

    cc = CurveConfig.parse(cfg.curve)
    if not cc.enabled:
        return None, None
    auth = CurveAuthenticator(ctx, cc.authorized_dir)
    auth.start()
    registry.register(_CurveCollector(auth))
    return (lambda sock: make_server(sock, cc)), auth


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

    def __init__(self, cfg: StackConfig, *, ctx: Any = None, control: str | None = None
                 ) -> None:
        """`control`: run control's command-channel endpoint (default: the topology's);
        every service built here takes its lifecycle from there."""
        self.cfg = cfg
        self.det = Detector(cfg)
        self.max_message_bytes = cfg.max_message_bytes(self.det.geometry)
        self.ctx = ctx
        self.control = control or cfg.endpoints.control

    def _agent(self, svc: Service, name: str) -> None:
        from daq.agent import Agent

        svc.agent = Agent(self.control, name, svc, ctx=self.ctx)

    def simulated_run(self, ctx: RunContext) -> FrontEnds:
        """The front ends' streams of one run: the topology's beam, numbered by run
        control; each run draws its own events (seed and run number)."""
        from simulators.config import FaultConfig, SimConfig
        from simulators.frontend import FrontEnds
        from simulators.generator import Simulator

        s = self.cfg.simulator
        fields = {**s.sim, "run": ctx.run}
        fields["seed"] = int(fields.get("seed", 1)) * 1_000_003 + ctx.run
        sim = Simulator(SimConfig.parse(fields), self.det.geometry, self.det.calibration,
                        FaultConfig.parse(s.faults))
        return FrontEnds(sim, spills=ctx.max_spills or 1_000_000_000)

    def frontend(self, registry: CollectorRegistry, *,
                 on_emit: Callable[[Any], object] | None = None) -> FrontEnd:
        """A standing front end: it sends nothing until run control starts a run."""
        from simulators.service import FrontEnd

        s = self.cfg.simulator
        sent = _frontend_counter(registry)

        def make_run(ctx: RunContext) -> FrontEnds:
            return _counted(self.simulated_run(ctx), sent)

        fe = FrontEnd(None, self.cfg.endpoints.builder_in, pace=s.pace, factor=s.factor,
                      ctx=self.ctx, on_emit=on_emit, make_run=make_run)
        self._agent(fe, "frontend")
        return fe

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
        hook, auth = _curve_server(self.cfg, ctx, registry)
        svc = BuilderService(core, registry, ctx=ctx, input_hook=hook,
                             max_message_bytes=self.max_message_bytes)
        svc.authenticator = auth  # the builder stops it when it ends
        self._agent(svc, "builder")
        return svc

    def worker(self, index: int, registry: CollectorRegistry) -> TriggerWorker:
        from trigger.worker import TriggerWorker, WorkerConfig

        e = self.cfg.endpoints
        wc = WorkerConfig(input=e.builder_out, recorder=e.recorder, monitors=(e.monitor,),
                          index=index, with_crc=not e.builder_out.startswith("inproc://"),
                          max_message_bytes=self.max_message_bytes)
        w = TriggerWorker(wc, self.det.geometry, self.det.calibration, registry, ctx=self.ctx)
        self._agent(w, f"trigger-{index}")
        return w

    def recorder(self, registry: CollectorRegistry) -> RecorderService:
        from daq.recorder import RecorderService

        d = Path(self.cfg.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        rec = RecorderService(d, registry, listen=self.cfg.endpoints.recorder,
                              max_bytes=self.cfg.recorder_max_bytes, ctx=self.ctx,
                              max_message_bytes=self.max_message_bytes)
        self._agent(rec, "recorder")
        return rec

    def monitor(self, registry: CollectorRegistry) -> MonitorService:
        from monitors.config import MonitorConfig
        from monitors.service import MonitorService
        from monitors.service import MqttSettings as MonitorMqtt

        ms = mqtt_settings(self.cfg, "monitor")
        # a client id nobody can guess (the broker lets a second connection with the same
        # id take the session over), TLS as the URL says
        mqtt = None if ms is None else MonitorMqtt(
            host=ms.host, port=ms.port, username=ms.username,
            password=ms.password.get_secret_value(),
            client_id=f"na64-monitor-{uuid.uuid4().hex[:16]}", tls=ms.tls,
            ca=str(ms.ca) if ms.ca else None)
        mon = MonitorService(self.cfg.endpoints.monitor,
                             config=MonitorConfig.parse(self.cfg.monitor), registry=registry,
                             mqtt=mqtt, boards=self.det.geometry.board_names, ctx=self.ctx,
                             max_message_bytes=self.max_message_bytes)
        if self.cfg.metrics.web is not None:  # the shift page, one of the monitor's loops
            from monitors.web import ShiftPage

            mon.web = ShiftPage(mon, port=self.cfg.metrics.web, addr=self.cfg.metrics.addr)
        self._agent(mon, "monitor")
        return mon


def _frontend_counter(registry: CollectorRegistry) -> Any:
    from prometheus_client import Counter

    return Counter("na64_frontend_events", "Events sent by the simulated front ends",
                   ["board"], registry=registry)


def _counted(fe: FrontEnds, sent: Any) -> FrontEnds:
    """The simulator's own series: what it generated, for comparison with what was built."""
    orig = fe.run

    def run(**kw: Any) -> Any:
        from daq.wire import Kind

        for em in orig(**kw):
            if em.msg.kind is Kind.SLICE and em.src != "truth":
                sent.labels(em.src).inc(em.msg.count)
            yield em

    fe.run = run  # type: ignore[method-assign]
    return fe


# --- all services in one process ------------------------------------------------------


def member_names(cfg: StackConfig) -> list[str]:
    """The services run control expects on its command channel, in data-flow order."""
    return ["frontend", "builder", *(f"trigger-{i}" for i in range(cfg.workers)),
            "recorder", "monitor"]


class LocalStack:
    """Every service of a topology in one process under one run control (the demo, the
    soak test, tests): the same services, lifecycle and run-control core as `na64daq up`,
    on in-process transports. Runs are numbered by run control (persisted under
    `run_dir/control`); with a broker in the topology, run control also takes `na64daq
    ctl` over MQTT, as it does across processes.

        async with LocalStack(cfg) as stack:
            reply = await stack.take_run(spills=3)     # start, 3 spills, stop (drained)
    """

    def __init__(self, cfg: StackConfig, *, metrics: bool = True) -> None:
        from daq.transport import context

        self.cfg = cfg
        self.metrics = metrics
        self.ctx = context()
        self.registries: dict[str, CollectorRegistry] = {}
        self.servers: dict[str, MetricsServer] = {}
        self.services: dict[str, Service] = {}
        self._stack = contextlib.AsyncExitStack()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.control: Any = None
        self.ctl: Any = None
        self.conductor: Any = None

    def _registry(self, name: str, port: int) -> CollectorRegistry:
        reg = self.registries[name] = CollectorRegistry()
        if self.metrics:
            self.servers[name] = MetricsServer(reg, port=port, addr=self.cfg.metrics.addr)
        return reg

    def build(self) -> None:
        from daq.control.conductor import Conductor
        from daq.control.controller import Controller
        from daq.control.store import StateStore

        cfg, m = self.cfg, self.cfg.metrics
        self.conductor = Conductor(cfg.endpoints.control, member_names(cfg), ctx=self.ctx)
        factory = Factory(cfg, ctx=self.ctx, control=self.conductor.endpoint)
        # binders first (builder, recorder, monitor), then the sockets that connect
        self.services["builder"] = factory.builder(self._registry("builder", m.builder))
        self.services["recorder"] = factory.recorder(self._registry("recorder", m.recorder))
        self.services["monitor"] = factory.monitor(self._registry("monitor", m.monitor))
        for i in range(cfg.workers):
            name = f"trigger-{i}"
            self.services[name] = factory.worker(i, self._registry(name, m.port("trigger", i)))
        self.services["frontend"] = factory.frontend(self._registry("frontend", m.frontend))
        store = StateStore(Path(cfg.run_dir) / "control")
        reg = self._registry("control", m.control)
        if cfg.mqtt is not None:
            from daq.control.service import RunControlService

            self.control = RunControlService(mqtt_settings(cfg, "runcontrol"), store,
                                             self.conductor, registry=reg)
            self.ctl = self.control.ctl
        else:
            self.ctl = Controller(store, self.conductor)

    async def __aenter__(self) -> LocalStack:
        if not self.services:
            self.build()
        try:
            for s in self.services.values():
                await self._stack.enter_async_context(s)
            self._tasks.append(asyncio.create_task(self.conductor.serve(self._stopping),
                                                   name="conductor"))
            if self.control is not None:
                await self._stack.enter_async_context(self.control)
            else:
                self._tasks.append(asyncio.create_task(self._follow(), name="run-ends"))
            await self.conductor.wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _follow(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.ctl.follow_run_ends()

    # --- runs ---------------------------------------------------------------------------

    @property
    def run_state(self) -> str:
        return str(self.ctl.core.state.state.value)

    @property
    def run(self) -> int | None:
        r = self.ctl.core.state.run
        return int(r.run) if r is not None else None

    async def start_run(self, *, spills: int | None = None, **params: Any) -> dict[str, Any]:
        """Run control's start (refusals raise ProtocolError); `spills`: the front ends end
        the run by themselves after that many, and run control stops it."""
        if spills is not None:
            params["max_spills"] = spills
        reply: dict[str, Any] = await self.ctl.request("start", params=params)
        if not reply.get("ok"):
            raise ServiceError(f"start refused: {reply.get('reason')}")
        return reply

    async def stop_run(self, reason: str = "stopped") -> dict[str, Any]:
        reply: dict[str, Any] = await self.ctl.request("stop", reason=reason)
        return reply

    async def wait_run_closed(self, *, on_tick: Callable[[], Awaitable[None]] | None = None,
                              tick_s: float = 0.25) -> None:
        """Until run control is no longer running or paused (the run closed, drained)."""
        while self.run_state in ("running", "paused"):
            await asyncio.sleep(tick_s)
            if on_tick is not None:
                await on_tick()

    async def take_run(self, *, spills: int,
                       on_tick: Callable[[], Awaitable[None]] | None = None,
                       **params: Any) -> dict[str, Any]:
        """Start a run of `spills` spills and wait until it is closed."""
        await self.start_run(spills=spills, **params)
        await self.wait_run_closed(on_tick=on_tick)
        run = self.ctl.core.state.run
        return dict(run.to_json()) if run is not None else {}

    # --- shutdown ----------------------------------------------------------------------

    async def __aexit__(self, *exc: Any) -> None:
        """Stop a run still open (drained, recorded), then every service in data-flow
        order: the front ends end their streams, the rest drain behind them."""
        try:
            if self.ctl is not None and self.run_state in ("running", "paused"):
                with contextlib.suppress(Exception):
                    await self.stop_run("the stack was shut down")
            for name in ("frontend", "builder", *self.worker_names(), "recorder", "monitor"):
                svc = self.services.get(name)
                if svc is None or svc.state.value not in ("running", "stopping"):
                    continue
                if name != "builder":  # the builder ends with its input's end of stream;
                    svc.stop()         # one worker gets the builder's eos: stop them all
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(svc.wait(), 30.0)
                svc.stop()
            if self.control is not None:
                self.control.stop()
        finally:
            self._stopping.set()
            await self._stack.aclose()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.close()

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.servers.clear()

    # --- what the demo's view reads ----------------------------------------------------

    def worker_names(self) -> list[str]:
        return [n for n in self.services if n.startswith("trigger-")]

    @property
    def monitor(self) -> MonitorService:
        return self.services["monitor"]  # type: ignore[return-value]

    @property
    def recorder(self) -> RecorderService:
        return self.services["recorder"]  # type: ignore[return-value]

    @property
    def builder(self) -> BuilderService:
        return self.services["builder"]  # type: ignore[return-value]

    @property
    def frontend(self) -> FrontEnd:
        return self.services["frontend"]  # type: ignore[return-value]
