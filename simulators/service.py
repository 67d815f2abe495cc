"""The front-end service: one ZeroMQ PUSH per board, paced in real, compressed or no time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import zmq.asyncio

from daq.curve import SocketHook
from daq.errors import StateError
from daq.inlet import ZmqOutlet
from daq.lifecycle import RunContext, Transition
from daq.service import Loop, Service, next_or_stop
from daq.transport import context
from daq.wire import Kind, Message
from simulators.frontend import TRUTH, Emission, FrontEnds

Sleep = Callable[[float], Awaitable[None]]


class FrontEnd(Service):
    """Streams simulated runs to `endpoint`, one PUSH socket per board.

    Given `frontends`, it streams that one run and ends its streams (eos): a one-shot
    pipeline (`simulate --to`, tests). Given `make_run` instead, it is a standing front
    end under run control: it sends nothing until `start N`, streams run N until `stop`
    (it ends the spill under way and sends every board's run_stop) or its `max_spills`,
    then waits for the next start; its streams end (eos) only at shutdown.

    `pace` is "max" (as fast as possible), "realtime", or "factor" (time compressed by
    `factor`). Truth messages go to `truth_sink` (e.g. a run-file writer), not on the wire.
    Generation runs in a worker thread (the numba kernels release the GIL), so the event
    loop stays free.
    """

    name = "frontend"

    def __init__(self, frontends: FrontEnds | None, endpoint: str, *, pace: str = "max",
                 factor: float = 1.0, truth_sink: Callable[[Message], object] | None = None,
                 ctx: zmq.asyncio.Context | None = None, sleep: Sleep | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_emit: Callable[[Emission], object] | None = None,
                 make_run: Callable[[RunContext], FrontEnds] | None = None,
                 secure: SocketHook | None = None) -> None:
        super().__init__()
        if pace not in ("max", "realtime", "factor"):
            raise ValueError(f"pace={pace!r} is not one of max, realtime, factor")
        if factor <= 0:
            raise ValueError(f"factor={factor!r} must be positive")
        if (frontends is None) == (make_run is None):
            raise ValueError("give exactly one of frontends (one run) or make_run (standing)")
        self.fe = frontends
        self.make_run = make_run
        self.endpoint = endpoint
        self.speed = {"max": 0.0, "realtime": 1.0, "factor": factor}[pace]
        self.truth_sink = truth_sink
        self.ctx = ctx or context()
        self.secure = secure  # CURVE client options of each board's socket (daq.curve)
        self.sleep = sleep or self._interruptible_sleep
        self.clock, self.on_emit = clock, on_emit
        self.sent = 0
        self.paused = False  # run control: hold before the next spill starts
        self._stop_at_spill = False
        self._runs: asyncio.Queue[RunContext] = asyncio.Queue()
        self._streaming: RunContext | None = None
        self._streamed = asyncio.Event()  # the run under way has sent its run_stop
        self._streamed.set()
        self.spill = -1  # last spill started
        self.run_events = 0  # events the beam board sent in this run

    @property
    def boards(self) -> list[str]:
        return list(self.fe.boards) if self.fe is not None else []

    def stop_after_spill(self) -> None:
        """End the stream at the next spill boundary (run control's stop: no cut spill)."""
        self._stop_at_spill = True

    async def _interruptible_sleep(self, seconds: float) -> None:
        # a realtime run waits ~12 s between spills: stop() must not wait for that
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def loops(self) -> dict[str, Loop]:
        return {"emit": self._emit}

    # --- run lifecycle --------------------------------------------------------------------

    async def on_transition(self, transition: Transition, context: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        if self.make_run is None:
            raise StateError("streaming one run", transition.value)
        if transition is Transition.START:
            assert context is not None
            self._stop_at_spill, self.paused = False, False
            self._streamed.clear()
            self._runs.put_nowait(context)
        elif transition is Transition.STOP:
            self._stop_at_spill = True
            self.paused = False
            await self._streamed.wait()  # the spill under way ends, run_stop is sent
            return {"spills": self.spill + 1, "events": self.run_events}
        elif transition is Transition.PAUSE:
            self.paused = True
        elif transition is Transition.RESUME:
            self.paused = False
        return {}

    def status(self) -> dict[str, Any]:
        return {"spill": self.spill, "run_events": self.run_events, "paused": self.paused,
                "messages_sent": self.sent, "streaming": self._streaming is not None}

    # --- streaming ------------------------------------------------------------------------

    async def _emit(self) -> None:
        socks: dict[str, ZmqOutlet] = {}

        def sockets(boards: list[str]) -> None:
            for b in boards:
                if b not in socks:  # linger: let queued messages go on close
                    socks[b] = ZmqOutlet(self.ctx, self.endpoint, linger_s=5.0,
                                         hook=self.secure)

        try:
            if self.fe is not None:
                sockets(self.fe.streams)
                await self._stream(self.fe, socks, end="eos")
                return
            last: FrontEnds | None = None
            eos_sent = False
            while not self.stopping.is_set():
                ctx = await self._next_run()
                if ctx is None:
                    break
                assert self.make_run is not None
                fe = self.make_run(ctx)
                sockets(fe.streams)
                self._streaming, self.spill, self.run_events = ctx, -1, 0
                try:
                    how = await self._stream(fe, socks, end="run_stop")
                finally:
                    self._streaming = None
                    self._streamed.set()
                last, eos_sent = fe, how == "eos"
                if how == "ended" and self.agent is not None:
                    self.agent.notify("run_ended", run=ctx.run, spills=self.spill + 1,
                                      events=self.run_events)
            if last is None and self.make_run is not None:
                # never streamed: the boards' streams end all the same, so that the
                # builder ends its own at once
                last = self.make_run(RunContext(run=0, max_spills=1))
            if last is not None and not eos_sent:  # shutdown: every stream ends
                sockets(last.streams)
                for end in last.eos(0):
                    if end.src in socks:
                        await socks[end.src].send(end.frames())
        finally:
            for s in socks.values():
                s.close()

    async def _next_run(self) -> RunContext | None:
        return await next_or_stop(self._runs, self.stopping)

    async def _stream(self, fe: FrontEnds, socks: dict[str, ZmqOutlet], *,
                      end: str) -> str:
        """Send one run. Returns how its streams ended: "ended" (its last spill, then
        `end`: max_spills), "stopped" (run control's stop: run_stop) or "eos" (shutdown)."""
        it: Iterator[Emission] = fe.run(end=end)
        # the first data message pays for loading the generator's kernels (~0.3 s); the
        # schedule starts once it is ready, or the beam would owe that time and send it
        # in a burst, faster than its intensity
        head = await asyncio.to_thread(_head, it)
        start = self.clock() - (head[-1].t_ns / 1e9 / self.speed
                                if head and self.speed else 0.0)
        it = itertools.chain(head, it)
        last_ns = 0
        cut = False  # stopped before its last spill: the ends follow here
        while True:
            if self.stopping.is_set() or cut:
                # stopped early: close every stream properly so receivers see its end
                eos = end == "eos" or self.stopping.is_set()
                ends = fe.eos(last_ns) if eos else fe.run_stop(last_ns,
                                                              "stopped by run control")
                for e in ends:
                    if e.src != TRUTH:
                        await socks[e.src].send(e.frames())
                return "eos" if eos else "stopped"
            em = await asyncio.to_thread(_next, it)
            if em is None:
                return "ended"
            if self.speed:
                wait = em.t_ns / 1e9 / self.speed - (self.clock() - start)
                if wait > 0:
                    await self.sleep(wait)
                    if self.stopping.is_set():
                        fe.withdraw(em)  # never sent; the ends follow
                        continue
            # the spill boundary is decided once the spill is due: a stop or a pause
            # that came during the wait between spills applies to this spill
            if em.msg.kind is Kind.SPILL_START:
                if self._stop_at_spill:
                    fe.withdraw(em)  # not sent: the ends follow on the next turn
                    cut = True
                    continue
                if self.paused:
                    held = self.clock()
                    while self.paused and not self.stopping.is_set() \
                            and not self._stop_at_spill:
                        await (self.sleep(0.05) if self.speed else asyncio.sleep(0.05))
                    start += self.clock() - held  # a pause delays the schedule
                if self._stop_at_spill or self.stopping.is_set():
                    fe.withdraw(em)
                    cut = True
                    continue
                if em.src == fe.boards[0]:
                    self.spill = em.msg.spill
            last_ns = em.t_ns
            if em.src == TRUTH:
                if self.truth_sink is not None:
                    self.truth_sink(em.msg)
            else:
                await socks[em.src].send(em.frames())
                self.sent += 1
                if em.src == "BEAM" and em.msg.kind is Kind.SLICE:
                    self.run_events += em.msg.count
            if self.on_emit is not None:
                self.on_emit(em)


def _next(it: Iterator[Emission]) -> Emission | None:
    return next(it, None)


def _head(it: Iterator[Emission]) -> list[Emission]:
    """The emissions up to and including the first slice (all of them if there is none)."""
    out: list[Emission] = []
    for em in it:
        out.append(em)
        if em.msg.kind is Kind.SLICE:
            break
    return out
