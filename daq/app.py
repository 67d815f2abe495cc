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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from daq.metrics import MetricsServer
from daq.service import Service
from daq.stack import Detector, StackConfig
from daq.system import Stack

if TYPE_CHECKING:
    from daq.builder_service import BuilderService
    from daq.control.conductor import Conductor
    from daq.curve import CurveAuthenticator, CurveLinks, SocketHook
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
    from daq.mqtt import ENV_PASSWORD, ENV_URL, ENV_USER, MqttSettings

    env = dict(os.environ)
    env[ENV_URL] = url
    if service is not None:
        tag = service.upper()
        own = {k: os.environ.get(k.replace("NA64_MQTT_", f"NA64_MQTT_{tag}_"))
               for k in (ENV_USER, ENV_PASSWORD)}
        if all(own.values()):
            env.update({k: v for k, v in own.items() if v is not None})
    return MqttSettings.from_mapping(env, source="the environment")


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
        self.links: CurveLinks | None = None  # when the topology enables CURVE
        if cfg.curve.enabled:
            from daq.curve import CurveLinks

            self.links = CurveLinks(cfg.curve, cfg.endpoints.binders())
        self._auth: CurveAuthenticator | None = None

    def _agent(self, svc: Service, name: str) -> None:
        from daq.agent import Agent

        svc.agent = Agent(self.control, name, svc, ctx=self.ctx, secure=self._secure(name))

    def _secure(self, name: str) -> SocketHook | None:
        """Service `name`'s CURVE hook for each socket it binds or connects (daq.curve)."""
        return None if self.links is None else self.links.hook(name)

    def _authenticator(self, endpoint: str, registry: CollectorRegistry | None
                       ) -> CurveAuthenticator | None:
        """The ZAP handler of a service that binds `endpoint` over TCP with CURVE on; its
        refusals are counted on `registry` (na64_curve_refused_total). One per context:
        returned only to the first service, which stops it when it ends."""
        if self.links is None or not endpoint.startswith("tcp://"):
            return None
        from daq.curve import CurveAuthenticator, CurveCollector
        from daq.transport import context

        first = self._auth is None
        if self._auth is None:  # needs the running event loop: services are built in it
            self._auth = CurveAuthenticator(self.ctx or context(), self.links.authorized_dir)
            self._auth.start()
        if registry is not None:
            registry.register(CurveCollector(self._auth))
        return self._auth if first else None

    def conductor(self, registry: CollectorRegistry | None = None) -> Conductor:
        """Run control's command channel. With CURVE a service is heard only from the
        public key listed under its name (decision 0018)."""
        from daq.control.conductor import Conductor

        names = member_names(self.cfg)
        keys = None
        if self.links is not None and self.control.startswith("tcp://"):
            keys = self.links.public_keys_of(names)
        auth = self._authenticator(self.control, registry)
        c = Conductor(self.control, names, ctx=self.ctx, secure=self._secure("control"),
                      keys=keys)
        c.authenticator = auth
        return c

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
                      ctx=self.ctx, on_emit=on_emit, make_run=make_run,
                      secure=self._secure("frontend"))
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
        auth = self._authenticator(self.cfg.endpoints.builder_in, registry)
        svc = BuilderService(core, registry, ctx=self.ctx, secure=self._secure("builder"),
                             max_message_bytes=self.max_message_bytes)
        svc.authenticator = auth  # the builder stops it when it ends
        self._agent(svc, "builder")
        return svc

    def worker(self, index: int, registry: CollectorRegistry, *,
               shared_loop: bool = False) -> TriggerWorker:
        """`shared_loop`: the worker shares its event loop with other services (LocalStack)."""
        from trigger.worker import TriggerWorker, WorkerConfig

        e = self.cfg.endpoints
        wc = WorkerConfig(input=e.builder_out, recorder=e.recorder, monitors=(e.monitor,),
                          index=index, with_crc=not e.builder_out.startswith("inproc://"),
                          max_message_bytes=self.max_message_bytes,
                          kernels_in_thread=shared_loop)
        name = f"trigger-{index}"
        w = TriggerWorker(wc, self.det.geometry, self.det.calibration, registry, ctx=self.ctx,
                          secure=self._secure(name))
        self._agent(w, name)
        return w

    def recorder(self, registry: CollectorRegistry) -> RecorderService:
        from daq.recorder import RecorderService

        d = Path(self.cfg.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        listen = self.cfg.endpoints.recorder
        auth = self._authenticator(listen, registry)
        rec = RecorderService(d, registry, listen=listen,
                              max_bytes=self.cfg.recorder_max_bytes, ctx=self.ctx,
                              secure=self._secure("recorder"),
                              max_message_bytes=self.max_message_bytes)
        rec.authenticator = auth  # the recorder stops it when it ends
        self._agent(rec, "recorder")
        return rec

    def monitor(self, registry: CollectorRegistry) -> MonitorService:
        from monitors.config import MonitorConfig
        from monitors.service import MonitorService

        # TLS as the URL says; a client id nobody can guess (daq.mqtt.client)
        mqtt = mqtt_settings(self.cfg, "monitor")
        mon = MonitorService(self.cfg.endpoints.monitor,
                             config=MonitorConfig.parse(self.cfg.monitor), registry=registry,
                             mqtt=mqtt, boards=self.det.geometry.board_names, ctx=self.ctx,
                             secure=self._secure("monitor"),
                             max_message_bytes=self.max_message_bytes)
        mon.authenticator = self._authenticator(self.cfg.endpoints.monitor, registry)
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


class LocalStack(Stack):
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
        from daq.control.controller import Controller
        from daq.control.store import StateStore

        cfg, m = self.cfg, self.cfg.metrics
        factory = Factory(cfg, ctx=self.ctx)
        reg = self._registry("control", m.control)
        self.conductor = factory.conductor(reg)
        factory.control = self.conductor.endpoint  # where a port 0 was bound
        # binders first (builder, recorder, monitor), then the sockets that connect
        self.services["builder"] = factory.builder(self._registry("builder", m.builder))
        self.services["recorder"] = factory.recorder(self._registry("recorder", m.recorder))
        self.services["monitor"] = factory.monitor(self._registry("monitor", m.monitor))
        for i in range(cfg.workers):
            name = f"trigger-{i}"
            self.services[name] = factory.worker(i, self._registry(name, m.port("trigger", i)),
                                                shared_loop=True)
        self.services["frontend"] = factory.frontend(self._registry("frontend", m.frontend))
        store = StateStore(Path(cfg.run_dir) / "control")
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
            await self.wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _follow(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.ctl.follow_run_ends()

    # --- what run control holds (daq.system.Stack) --------------------------------------

    @property
    def expected(self) -> list[str]:
        return member_names(self.cfg)

    def run_document(self) -> dict[str, Any]:
        return dict(self.ctl.core.status())

    def service_documents(self) -> dict[str, dict[str, Any]]:
        return self.conductor.documents()

    async def request(self, verb: str, **args: Any) -> dict[str, Any]:
        from daq.control.protocol import ProtocolError

        try:
            reply: dict[str, Any] = await self.ctl.request(verb, **args)
        except ProtocolError as e:
            return {"ok": False, "reason": str(e)}
        return reply

    async def tick(self) -> None:
        await asyncio.sleep(0.1)

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
