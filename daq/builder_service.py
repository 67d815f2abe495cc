"""The event builder service: PULL from the boards, run the EventBuilder core, PUSH slices on.

Three named loops: `input` (receive, decode, feed; stops reading under backpressure),
`output` (send built messages in order), `timeouts` (poll the core's timeouts). Counters
live in the core and are exported at scrape time by a collector on the service's own
registry, labelled by `board` and by `source` ("live" | "replay") so that dashboards
never mix replayed data with live data. `na64_builder_decode_errors` also has a `reason`:
one of daq.inlet.REASONS for a message refused at the input (malformed, too large), or
`content` for one that decoded but does not fit the geometry or the stream (counted by
the core).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daq import hits
from daq.builder import REFUSALS, EventBuilder, Stats
from daq.curve import SocketHook
from daq.inlet import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REASONS,
    Received,
    Refusals,
    ZmqInlet,
    ZmqOutlet,
)
from daq.lifecycle import RunContext, Transition
from daq.service import Loop, Service
from daq.transport import context
from daq.wire import Kind, Message, encode

#: the reason label of decode errors the core counts (the message decoded, its content
#: does not fit the geometry or the stream)
CONTENT = "content"

# messages taken from the input in one event-loop turn (feature slices: ~5 ms of work)
INPUT_BATCH = 64

_PER_BOARD = {
    "fragments": ("fragments", "Board fragments received"),
    "seq_gaps": ("seq_gaps", "Stream messages lost (sequence numbers never received)"),
    "duplicates": ("duplicates", "Duplicate messages or fragments dropped"),
    "out_of_order": ("out_of_order", "Messages that arrived after a later one of their stream"),
    "late": ("late_fragments", "Fragments that arrived after their slice was built"),
    "incomplete": ("incomplete_events", "Built events in which the board was missing"),
    "empty": ("empty_fragments", "Zero-suppressed fragments (no data arrays)"),
}
_TOTALS = {
    "events": ("events", "Events built and sent downstream"),
    "slices": ("slices", "Built slices sent downstream"),
    "shed": ("shed_events", "Events shed for dead time (downstream too slow)"),
    "skipped": ("skipped_events", "Events dropped by the skip_spill policy"),
    "spills": ("spills", "Spills started"),
}


class BuilderCollector(Collector):
    """Reads the core's counters at scrape time (no double bookkeeping)."""

    def __init__(self, svc: BuilderService) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        b = self.svc.builder
        stats: dict[str, Stats] = dict(b.stats)
        for attr, (name, doc) in _PER_BOARD.items():
            fam = CounterMetricFamily(f"na64_builder_{name}", doc, labels=["board", "source"])
            for source, st in stats.items():
                values = dict(getattr(st, attr))
                for board in b.boards:
                    fam.add_metric([board, source], values.get(board, 0))
            yield fam
        yield self._decode_errors([*b.boards, "unknown"], stats)
        for attr, (name, doc) in _TOTALS.items():
            fam = CounterMetricFamily(f"na64_builder_{name}", doc, labels=["source"])
            for source, st in stats.items():
                fam.add_metric([source], getattr(st, attr))
            yield fam
        fam = CounterMetricFamily("na64_builder_refused", "Records refused under run "
                                  f"control, by reason ({', '.join(REFUSALS)})",
                                  labels=["reason", "source"])
        for source, st in stats.items():
            for reason in REFUSALS:
                fam.add_metric([reason, source], st.refused.get(reason, 0))
        yield fam
        yield CounterMetricFamily("na64_builder_backpressure_seconds",
                                  "Seconds the builder stopped reading its input",
                                  value=self.svc.backpressure_s)
        gauges = {
            "pending_events": ("Events in partly built slices", b.pending_events),
            "queued_events": ("Built events waiting to be sent", self.svc.queued_events),
            "pending_bytes": ("Bytes of array data in partly built slices",
                              b.pending_bytes),
            "queued_bytes": ("Bytes of array data in built slices waiting to be sent",
                             self.svc.queued_bytes),
            "backpressure": ("1 while the builder is not reading its input",
                             float(self.svc.backpressured)),
            "shedding": ("1 while built slices are shed", float(b.shedding)),
            "run": ("Run number being built", b.run),
            "replay": ("1 when the current input is a replay", float(b._replay)),
        }
        for name, (doc, v) in gauges.items():
            yield GaugeMetricFamily(f"na64_builder_{name}", doc, value=v)

    def _decode_errors(self, boards: list[str], stats: dict[str, Stats]) -> Metric:
        """Refused at the input (daq.inlet, live: its source is unknown), by reason; and
        refused by the core (`content`), by source."""
        fam = CounterMetricFamily("na64_builder_decode_errors", "Messages refused as "
                                  "malformed, too large or not fitting the geometry",
                                  labels=["board", "source", "reason"])
        refused = self.svc.inlet.refusals.counts
        for source, st in stats.items():
            for board in boards:
                fam.add_metric([board, source, CONTENT], st.decode_errors.get(board, 0))
                if source == "live":
                    for reason in REASONS:
                        fam.add_metric([board, source, reason], refused[(reason, board)])
        return fam


class BuilderService(Service):
    """Binds PULL on `config.input` and PUSH on `config.output`; see the module docstring."""

    name = "builder"

    def __init__(self, builder: EventBuilder, registry: CollectorRegistry, *,
                 ctx: zmq.asyncio.Context | None = None,
                 secure: SocketHook | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 poll_interval_s: float = 0.05, drain_timeout_s: float = 5.0,
                 welcome_timeout_s: float = 2.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        """`welcome_timeout_s`: under run control, how long the input waits for run
        control's first word (see `_welcome`). `secure`: CURVE server options of both
        sockets (daq.curve), before they bind. `max_message_bytes`: the input's limit
        (daq.inlet)."""
        super().__init__()
        self.builder = builder
        self.cfg = builder.config
        self.ctx = ctx or context()
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.welcome_timeout_s = welcome_timeout_s
        self.queue: collections.deque[Message] = collections.deque()
        self.queued_events = 0
        self.queued_bytes = 0
        self.backpressured = False
        self.backpressure_s = 0.0
        self._congested_since: float | None = None
        self.dropped_at_stop = 0
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._finished = False
        self._eos: set[str] = set()
        refusals = Refusals("builder", boards=builder.boards)
        # RCVHWM before bind: per connection
        self.inlet = ZmqInlet(self.ctx, self.cfg.input, refusals, hwm=self.cfg.input_hwm,
                              max_message_bytes=max_message_bytes, hook=secure)
        self.outlet = ZmqOutlet(self.ctx, self.cfg.output, bind=True, hwm=self.cfg.output_hwm,
                                hook=secure)
        self.input_endpoint = self.inlet.endpoint
        self.output_endpoint = self.outlet.endpoint
        registry.register(BuilderCollector(self))
        builder.on_activate = self._activated
        #: the CURVE authenticator of this process, when configured (daq.curve): stopped here
        self.authenticator: Any = None

    # -- run lifecycle (daq.lifecycle), driven by run control -----------------------------

    async def on_transition(self, transition: Transition, context: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        if transition is Transition.START:
            assert context is not None
            self.builder.begin_run(context.run, replay=context.replay,
                                   snapshot=context.snapshot)
        elif transition is Transition.STOP:
            self._enqueue(self.builder.end_run(self.clock()))
        return {}

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """A trigger configuration from run control: from the next spill start, or at once
        (`at_once`: a restarted builder takes up what was active)."""
        cfg, who = args.get("trigger"), args.get("who", "")
        if not isinstance(cfg, dict) or not isinstance(who, str):
            raise ValueError("set needs 'trigger' (an object) and 'who' (a string)")
        if args.get("at_once"):
            h = self.builder.resume_trigger_config(cfg, who)
        else:
            h = self.builder.set_trigger_config(cfg, who)
        return {"cfg": h}

    async def _welcome(self) -> None:
        """Under run control, the input is not read until run control has said all it had
        to say at hello (`welcome`, after the active trigger configuration and, for a
        builder restarted during a run, the start that brings it into the run), or
        `welcome_timeout_s` passed (no run control answering). A builder restarted during
        a run otherwise built what the front ends had queued for it with the default
        trigger configuration, or refused it as of no run, until run control's word came."""
        if self.agent is None:
            return
        waits = [asyncio.ensure_future(e.wait())
                 for e in (self.stopping, self.agent.welcomed)]
        try:
            await asyncio.wait(waits, timeout=self.welcome_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in waits:
                f.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _activated(self, config: dict[str, Any], who: str, run: int, spill: int) -> None:
        if self.agent is not None:
            self.agent.notify("activated", config=config, who=who, run=run, spill=spill)

    def status(self) -> dict[str, Any]:
        b = self.builder
        live = b.stats["live"]
        return {"events": live.events, "spills": live.spills,
                "refused": dict(live.refused), "cfg": b.active_config[1],
                "pending_events": b.pending_events, "queued_events": self.queued_events}

    def loops(self) -> dict[str, Loop]:
        return {"input": self._input, "output": self._output, "timeouts": self._timeouts}

    # -- loops -----------------------------------------------------------------------------

    def _enqueue(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.queue.append(m)
            self.queued_events += m.count if m.kind is Kind.SLICE else 0
            self.queued_bytes += m.nbytes
        if msgs:
            self._ready.set()
        if self.builder.stopped and not self._finished:
            self._finish()

    def _finish(self) -> None:
        """End the stream once: flush the core (run_stop, eos); the output loop drains."""
        self._finished = True
        self._enqueue(self.builder.finish(self.clock()))

    def _full(self, fraction: float = 1.0) -> bool:
        """The queue holds `fraction` of its bound, in events or in bytes."""
        return self.queued_events >= fraction * self.cfg.max_pending_events \
            or self.queued_bytes >= fraction * self.cfg.max_pending_bytes

    def _caught_up(self) -> bool:
        """Nothing waits at the input: the front ends are not being held back."""
        return not self.inlet.waiting()

    def _relieve(self) -> None:
        """Congestion lasts until the input has caught up: while something waits at the
        input, the front ends are held back and the beam arrives late, however the queue
        moves in between (it drains in bursts as the workers' ZeroMQ pipes free up, so
        "down to half its bound" happened many times during one overload, and each time
        restarted the clock: the lag grew and spills that came in below capacity, after
        the overload, met the backlog and were shed). Shedding ends once, as well, the
        queue is down to half its bound."""
        if self._congested_since is None and not self.builder.shedding:
            return
        if not self._caught_up():
            return
        if self.builder.shedding and self._full(0.5):
            return
        self._congested_since = None
        self.builder.shedding = False

    async def _wait_for_space(self) -> None:
        """Backpressure: stop reading while the queue is full; shed once the front ends
        have been held back for shed_after_s without the input catching up, until it has
        caught up (`_relieve`)."""
        self._relieve()
        if not self._full() or self.builder.shedding:
            return
        now = self.clock()
        if self._congested_since is None:
            self._congested_since = now
        left = self.cfg.shed_after_s - (now - self._congested_since)
        if left > 0:
            self.backpressured = True
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), left)
            self.backpressure_s += self.clock() - now
            self.backpressured = False
        # a wait that ended without space, or congestion that outlasted shed_after_s even
        # though the queue moved in between: dead time, counted, instead of stalling the
        # front ends (their buffers would hold the backlog and the beam cannot wait)
        if self._full() and self.clock() - self._congested_since >= self.cfg.shed_after_s:
            self.builder.shedding = True

    async def _input(self) -> None:
        try:
            await self._welcome()
            while not self.stopping.is_set() and not self._finished:
                await self._wait_for_space()
                if await self.inlet.wait(0.1):
                    self._take_waiting()
        finally:
            if not self._finished:
                self._finish()

    def _take_waiting(self) -> None:
        """Take what waits at the input in one go, until it is empty, the queue is full or
        INPUT_BATCH messages were taken (then the other loops get a turn). One message per
        event-loop turn would, in a busy process, find the next one always waiting: the
        input would never be seen caught up, and congestion never end."""
        for _ in range(INPUT_BATCH):
            if self._finished or (self._full() and not self.builder.shedding):
                return
            rx = self.inlet.take()
            if rx is None:
                self._relieve()  # caught up
                return
            self._handle(rx)

    def _handle(self, rx: Received) -> None:
        # the detector values go on unread: the trigger checks their CRCs (end to end)
        msg = self.inlet.refusals.decode(rx, forwarded=hits.VALUES)
        if msg is None:
            return
        self._enqueue(self.builder.feed(msg, self.clock()))
        board = self.builder.board_of(msg)
        if msg.kind is Kind.END_OF_STREAM and board is not None:
            self._eos.add(board)
            if len(self._eos) == len(self.builder.boards) and not self._finished:
                self._finish()

    async def _output(self) -> None:
        deadline: float | None = None
        while True:
            if not self.queue:
                if self._finished:
                    return
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), 0.1)
                continue
            if self.stopping.is_set() and deadline is None:
                deadline = self.clock() + self.drain_timeout_s
            msg = self.queue[0]
            frames = encode(msg, with_crc=self.cfg.with_crc)
            # draining at stop (a deadline): nobody may be listening any more
            if not await self.outlet.send(frames, deadline=deadline, clock=self.clock):
                self.dropped_at_stop = len(self.queue)
                self.queue.clear()
                self.queued_events = self.queued_bytes = 0
                return
            self.queue.popleft()
            self.queued_bytes -= msg.nbytes
            if msg.kind is Kind.SLICE:
                self.queued_events -= msg.count
                if not self._full():
                    self._space.set()
                # slices completed by a timeout, while the input is idle, must not be shed
                # after the queue has drained
                self._relieve()

    async def _timeouts(self) -> None:
        while not self._finished:
            await asyncio.sleep(self.poll_interval_s)
            if self._finished:
                return
            self._enqueue(self.builder.poll(self.clock()))

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
            if self.authenticator is not None:
                await self.authenticator.aclose()
        finally:
            self.inlet.close()
            # a sent message is only queued in zmq: linger so that the end of the stream
            # (last spill_end, run_stop, eos) reaches the workers after this process ends
            self.outlet.close(self.drain_timeout_s)
