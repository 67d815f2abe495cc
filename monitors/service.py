"""MonitorService: PULL features and markers, feed the pure core, update /metrics, publish MQTT."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry, Counter

from daq.curve import SocketHook
from daq.geometry import BOARD_NAMES
from daq.inlet import DEFAULT_MAX_MESSAGE_BYTES, Received, Refusals, ZmqInlet, drain
from daq.mqtt import Client, MqttSettings, Session
from daq.service import Loop, Service
from daq.transport import context
from daq.wire import Kind, Message
from monitors import alarmtext
from monitors.aggregate import MonitorInputError, RunAnalysis, Source
from monitors.alarms import Alarms, Transition
from monitors.config import MonitorConfig
from monitors.kernels import warm_up
from monitors.metrics import SOURCES, MonitorMetrics
from monitors.summary import SpillSummary

SPILL_TOPIC = "na64/monitor/spill"
RUN_TOPIC = "na64/monitor/run"  # retained: the last closed run's totals
ALARM_TOPIC = "na64/alarms"
RUN_STOP_GRACE_S = 2.0  # after run_stop: how long open spills may still get features
DRAIN_TIMEOUT_S = 5.0  # at stop: longest time spent taking what is still arriving
_QUIET_S = 0.25  # at stop: the input is drained once nothing has come for this long
log = logging.getLogger("na64.monitors")


class MonitorService(Service):
    """Binds a PULL socket on `endpoint`; workers connect PUSH and send features + markers."""

    name = "monitor"

    def __init__(self, endpoint: str, *, config: MonitorConfig, registry: CollectorRegistry,
                 mqtt: MqttSettings | None = None, boards: Sequence[str] = BOARD_NAMES,
                 clock: Callable[[], float] = time.time, tick_s: float = 1.0,
                 ctx: zmq.asyncio.Context | None = None, keep_summaries: int = 256,
                 secure: SocketHook | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.max_message_bytes = max_message_bytes
        self.cfg = config
        self.mqtt = mqtt
        self.boards = tuple(boards)
        self.clock = clock
        self.tick_s = tick_s
        self.metrics = MonitorMetrics(registry, config, clock=clock)
        # loss accounting per closed spill: what the BEAM board announced (its scaler) minus
        # what reached the monitors minus what the builder shed; a crash anywhere upstream
        # (builder, worker) or here shows up in this counter, never silently
        self.m_announced = Counter(
            "na64_monitor_announced_events", "Events the BEAM board announced for closed "
            "spills (its spill_end scaler)", ["source"], registry=registry)
        self.m_lost = Counter(
            "na64_monitor_lost_events", "Announced events that were neither processed nor "
            "shed (lost in a crash or with a lost message), per closed spill",
            ["source"], registry=registry)
        self.m_accepted = Counter(
            "na64_monitor_accepted_events", "Events with a trigger bit fired, per closed "
            "spill (what the run file should hold)", ["source"], registry=registry)
        for src in SOURCES:
            self.m_accepted.labels(src)
            self.m_announced.labels(src)
            self.m_lost.labels(src)
        self._stopped_at: dict[Source, tuple[float, int]] = {}
        #: where the spills closed so far are remembered, so that a restarted monitor does
        #: not account a spill twice (None: not remembered; `na64daq serve` sets it)
        self.state_file: Path | None = None
        self._totals: dict[Source, dict[str, int]] = {}  # per run, persisted with the state
        self.analyses: dict[Source, RunAnalysis] = {}
        self.alarms: dict[Source, Alarms] = {s: Alarms(config.alarms, source=s) for s in SOURCES}
        for s in SOURCES:
            self.metrics.init_alarms(s)
        self.last_spill_time: dict[Source, float] = {}
        self.run_open: dict[Source, bool] = dict.fromkeys(SOURCES, False)
        # the last `keep_summaries` spills closed, in order (for callers): bounded, because a
        # monitor runs for months; the run totals and /metrics count every spill
        self.keep_summaries = keep_summaries
        self.summaries: list[SpillSummary] = []
        self.published = 0
        # Every topic is retained, so only its latest payload matters: the outbox keeps one
        # per topic (bounded by the number of topics however long the broker is away).
        self._outbox: dict[str, bytes] = {}
        self._pending: tuple[str, bytes] | None = None  # taken from the outbox, not yet sent
        self._wake = asyncio.Event()
        self._ctx = ctx or context()
        self.secure = secure
        #: the CURVE authenticator of this process, when configured (daq.curve): stopped here
        self.authenticator: Any = None
        self.refusals = Refusals("monitor", boards=self.boards,
                                 on_refused=lambda reason, _: self.metrics.on_refused(reason))
        self._inlet: ZmqInlet | None = None
        self.bound = endpoint
        # runs already closed (once per run), the latest few: a monitor runs for months
        self._runs_closed: collections.deque[tuple[Source, int]] = collections.deque(maxlen=64)
        #: the last closed runs' totals, newest last (bounded)
        self.run_summaries: list[dict[str, Any]] = []
        #: the shift page served from this process (monitors.web.ShiftPage), or None
        self.web: Any = None

    async def __aenter__(self) -> Self:
        # The socket exists only while the service runs, so that `handle` can be used (and
        # tested) without one and a never-started service holds no socket open.
        self._inlet = ZmqInlet(self._ctx, self.endpoint, self.refusals,
                               max_message_bytes=self.max_message_bytes, hook=self.secure)
        # tcp://127.0.0.1:0 style endpoints: report where we really are
        self.bound = self._inlet.endpoint
        try:
            return await super().__aenter__()
        except BaseException:
            self._close_socket()
            raise

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await super().__aexit__(et, e, tb)
            if self.authenticator is not None:
                await self.authenticator.aclose()
        finally:
            self._close_socket()  # cancelled before the receive loop ever ran

    def _close_socket(self) -> None:
        if self._inlet is not None:
            self._inlet.close()
            self._inlet = None

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {"receive": self._receive, "timer": self._timer}
        if self.mqtt is not None:
            loops["publish"] = self._publish
        if self.web is not None:  # the shift page (monitors.web), when the topology has one
            loops["web"] = self.web.serve
        return loops

    # --- receive -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        inlet = self._inlet
        assert inlet is not None
        try:
            # compile (or load from the cache) the aggregation kernel before the first slice,
            # off the loop: what arrives meanwhile waits in the socket
            await asyncio.to_thread(warm_up, self.cfg)
            while not self.stopping.is_set():
                if not await inlet.wait(self.tick_s):
                    continue
                while (rx := inlet.take()) is not None:  # what is queued, before waiting
                    self._received(rx)
            # stopping: take what the workers still send (their drain) before closing
            await drain(inlet, self._drained, quiet_s=_QUIET_S, timeout_s=DRAIN_TIMEOUT_S)
        finally:
            self._close_socket()

    async def _drained(self, rx: Received) -> bool:
        """One message taken by the drain at stop (never the end: workers send eos each)."""
        self._received(rx)
        return False

    def handle_frames(self, frames: list[Any], peer: str = "") -> list[SpillSummary]:
        """Decode and process one message from `peer`; bad input is counted, never raised."""
        return self._received(Received(frames, peer))

    def _received(self, rx: Received) -> list[SpillSummary]:
        t0 = time.perf_counter()
        msg = self.refusals.decode(rx)
        if msg is None:
            return []
        try:
            closed = self.handle(msg)
        except MonitorInputError as e:
            self.metrics.on_refused(e.reason)
            log.warning("refused %s from %s: %s", msg.kind, msg.src, e)
            closed = []
        self.metrics.on_message(str(msg.kind), time.perf_counter() - t0)
        return closed

    def _analysis(self, msg: Message) -> RunAnalysis:
        source: Source = "replay" if msg.replay else "live"
        ra = self.analyses.get(source)
        # A new run starts at its run_start, or at its first message when that overtook the
        # run_start through another worker (run numbers only grow).
        if ra is None or (ra.run is not None and (
                msg.run > ra.run or (msg.kind is Kind.RUN_START and msg.run != ra.run))):
            if ra is not None:
                self._closed(ra, ra.finish())  # a new run: the old one is over
                self._run_closed(ra)
            ra = self.analyses[source] = RunAnalysis(
                self.cfg, boards=self.boards, source=source, run=msg.run, keep_spectra=True,
                keep_last=self.keep_summaries)
            if msg.kind is not Kind.RUN_START:  # joined a run under way: restarted?
                self._restore(ra, source, msg.run)
            self.last_spill_time[source] = self.clock()
        return ra

    def handle(self, msg: Message) -> list[SpillSummary]:
        """Process one decoded message (raises MonitorInputError, counted by the caller)."""
        ra = self._analysis(msg)
        source = ra.source
        gaps_before = dict(ra.stream_gaps)
        closed = ra.feed(msg)
        for stream, n in ra.stream_gaps.items():
            self.metrics.on_stream_gap(source, stream, n - gaps_before.get(stream, 0))
        if msg.kind is Kind.RUN_START:
            self.run_open[source] = True
            self.last_spill_time[source] = self.clock()
            self.metrics.on_run_start(source, msg.run)
        elif msg.kind is Kind.RUN_STOP:
            self.run_open[source] = False
            self._stopped_at[source] = (self.clock(), msg.run)
            self._alarm_transitions(self.alarms[source].clear_all(run=msg.run))
        self._closed(ra, closed)
        self.metrics.set_open_spills(sum(a.open_spills for a in self.analyses.values()))
        stopped = self._stopped_at.get(source)
        if stopped is not None and stopped[1] == ra.run and not ra.open_spills:
            self._run_closed(ra)  # the last spill closed after the run_stop came
        return closed

    def _run_closed(self, ra: RunAnalysis) -> None:
        """Every spill of the run is closed after its run_stop: publish the run's totals
        and tell run control (which answers a stop only then). Once per run."""
        if ra.run is None or (ra.source, ra.run) in self._runs_closed:
            return
        self._runs_closed.append((ra.source, ra.run))
        t = self._totals.get(ra.source, {})
        same = t.get("run") == ra.run
        doc = {"run": ra.run, "replay": ra.source == "replay", "source": ra.source,
               "spills": int(t.get("spills", 0)) if same else ra.closed_spills,
               "forced_spills": ra.forced_spills,
               **{k: int(t.get(k, 0)) if same else 0
                  for k in ("events", "shed", "accepted", "announced", "lost")},
               "when": self.clock()}
        self.run_summaries = [*self.run_summaries[-63:], doc]
        self._enqueue(RUN_TOPIC if ra.source == "live" else f"{RUN_TOPIC}/replay", doc)
        if self.agent is not None:
            self.agent.notify("run_closed", **doc)

    def run_counts(self, source: Source) -> dict[str, int]:
        """The current run's loss accounting (events, shed, accepted, announced, lost)."""
        return dict(self._totals.get(source, {}))

    def status(self) -> dict[str, Any]:
        ra = self.analyses.get("live")
        return {"open_spills": sum(a.open_spills for a in self.analyses.values()),
                "run_open": self.run_open.get("live", False),
                "spills_closed": ra.closed_spills if ra is not None else 0,
                "alarms": sorted(n for src in self.alarms.values()
                                 for n, up in src.raised.items() if up),
                "last_run": self.run_summaries[-1] if self.run_summaries else None}

    def _restore(self, ra: RunAnalysis, source: Source, run: int) -> None:
        """A previous incarnation of this monitor closed (and published) spills of `run`:
        do not account them again, and continue its run totals."""
        if self.state_file is None:
            return
        try:
            st = json.loads(self.state_file.read_text())[source]
            if st["run"] != run:
                return
            closed = [int(x) for x in st["closed"]]
            totals = {k: int(v) for k, v in st["totals"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return
        ra.mark_closed(closed)
        self._totals[source] = totals
        totals["run"] = run
        for name, v in totals.items():
            if name not in ("run", "spills"):
                self._total_counter(name).labels(source).inc(v)

    def _total_counter(self, name: str) -> Counter:
        own = {"announced": self.m_announced, "lost": self.m_lost, "accepted": self.m_accepted}
        if name in own:
            return own[name]
        return self.metrics.counter({"events": "na64_events_total",
                                     "shed": "na64_shed_events_total"}[name])

    def _remember(self, ra: RunAnalysis) -> None:
        if self.state_file is None or ra.run is None:
            return
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        state[ra.source] = {"run": ra.run, "closed": ra.recently_closed(64),
                            "totals": self._totals.get(ra.source, {})}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)  # a killed process leaves the old or the new one

    def _closed(self, ra: RunAnalysis, closed: list[SpillSummary]) -> None:
        t = self._totals.setdefault(ra.source, {})
        if closed and t.get("run") != ra.run:
            t.clear()
            t["run"] = ra.run or 0
        if closed:
            t["spills"] = t.get("spills", 0) + len(closed)  # over incarnations of the monitor
        for s in closed:
            beam = s.scalers.get("beam")
            add = {"events": s.events, "shed": s.shed, "accepted": s.accepted}
            if beam is not None:
                add |= {"announced": beam, "lost": max(0, beam - s.events - s.shed)}
            for k, v in add.items():
                t[k] = t.get(k, 0) + v
        if closed:
            self._remember(ra)
        now = self.clock()
        for s in closed:
            # the spill's spectra go into the run's /metrics histograms; holding them per
            # spill as well would grow without bound (hundreds of kB a spill)
            spectra = ra.spectra.pop(s.spill, None)
            self.metrics.on_spill(s, spectra, now)
            self.m_accepted.labels(ra.source).inc(s.accepted)
            beam = s.scalers.get("beam")
            if beam is not None:
                self.m_announced.labels(ra.source).inc(beam)
                self.m_lost.labels(ra.source).inc(max(0, beam - s.events - s.shed))
            elapsed = now - self.last_spill_time.get(ra.source, now)
            self.last_spill_time[ra.source] = now
            self.summaries.append(s)
            if len(self.summaries) >= 2 * self.keep_summaries:
                del self.summaries[:len(self.summaries) - self.keep_summaries]
            self._enqueue(SPILL_TOPIC, s.model_dump(mode="json"))
            self._alarm_transitions(self.alarms[ra.source].on_spill(s, elapsed_s=elapsed))

    def _alarm_transitions(self, transitions: list[Transition]) -> None:
        for t in transitions:
            self.metrics.set_alarm(t.source, t.name, t.state == "raised")
            log.warning("alarm %s", alarmtext.line(t.name, str(t.state), t.value, t.band,
                                                   run=t.run, spill=t.spill))
            # replay alarms go under their own subtree so they never touch the live state
            prefix = ALARM_TOPIC if t.source == "live" else f"{ALARM_TOPIC}/replay"
            self._enqueue(f"{prefix}/{t.name}", t.payload())

    def _enqueue(self, topic: str, payload: dict[str, Any]) -> None:
        if self.mqtt is not None:
            self._outbox.pop(topic, None)  # re-queued at the end: order of last change
            self._outbox[topic] = json.dumps(payload).encode()
            self._wake.set()
            self.metrics.set_outbox(len(self._outbox))

    # --- timer -------------------------------------------------------------------------------

    async def _timer(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.tick_s)
            self.tick()

    def tick(self) -> None:
        """Judge `no_spill` for every source with an open run."""
        now = self.clock()
        for source, (t, run) in list(self._stopped_at.items()):
            # after run_stop, spills still waiting for features (a worker died with them)
            # are closed as forced once the stragglers have had their time
            ra = self.analyses.get(source)
            if ra is not None and now - t >= RUN_STOP_GRACE_S:
                del self._stopped_at[source]
                if ra.run == run and ra.open_spills:
                    self._closed(ra, ra.finish())
                    self.metrics.set_open_spills(sum(a.open_spills
                                                     for a in self.analyses.values()))
                if ra.run == run:
                    self._run_closed(ra)
        for source, open_ in self.run_open.items():
            if open_:
                ra = self.analyses.get(source)
                since = now - self.last_spill_time.get(source, now)
                self._alarm_transitions(self.alarms[source].on_clock(
                    since, run=ra.run if ra else None))

    # --- MQTT --------------------------------------------------------------------------------

    async def _publish(self) -> None:
        """Every retained topic's latest payload, QoS 1, for as long as the monitor runs
        (daq.mqtt.Session: status document, last will, reconnection with backoff)."""
        assert self.mqtt is not None
        session = Session(self.mqtt, "monitor", stopping=self.stopping, clock=self.clock)
        await session.run(self._send_outbox)
        lost = len(self._outbox) + (self._pending is not None)
        if lost:
            # stopping with no broker: what is left is retained state nobody can receive
            # now; say so rather than hang the shutdown
            log.warning("MQTT: stopping with %d message(s) unsent", lost)

    async def _send_outbox(self, client: Client) -> None:
        """Until stopping and everything has gone out (a message in hand when the
        connection drops is sent again on the next one)."""
        while True:
            if self._pending is None:
                self._pending = await self._next_outgoing()
            if self._pending is None:
                return
            topic, payload = self._pending
            # retained, QoS 1: the last spill summary and each alarm's last state
            await client.publish(topic, payload, qos=1, retain=True)
            self.published += 1
            self._pending = None

    async def _next_outgoing(self) -> tuple[str, bytes] | None:
        """The next message to publish; None once stopping and everything has gone out."""
        while True:
            if self._outbox:
                topic = next(iter(self._outbox))
                item = topic, self._outbox.pop(topic)
                self.metrics.set_outbox(len(self._outbox))
                return item
            if self.stopping.is_set():
                return None
            self._wake.clear()
            waits = {asyncio.ensure_future(self._wake.wait()),
                     asyncio.ensure_future(self.stopping.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
