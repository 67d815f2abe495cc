"""The front-end service: one ZeroMQ PUSH per board, paced in real, compressed or no time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator

import zmq
import zmq.asyncio

from daq.service import Loop, Service
from daq.transport import context
from daq.wire import Kind, Message
from simulators.frontend import TRUTH, Emission, FrontEnds

Sleep = Callable[[float], Awaitable[None]]


class FrontEnd(Service):
    """Streams a simulated run to `endpoint`, one PUSH socket per board.

    `pace` is "max" (as fast as possible), "realtime", or "factor" (time compressed by
    `factor`). Truth messages go to `truth_sink` (e.g. a run-file writer), not on the wire.
    Generation runs in a worker thread (the numba kernels release the GIL), so the event
    loop stays free.
    """

    name = "frontend"

    def __init__(self, frontends: FrontEnds, endpoint: str, *, pace: str = "max",
                 factor: float = 1.0, truth_sink: Callable[[Message], object] | None = None,
                 ctx: zmq.asyncio.Context | None = None, sleep: Sleep | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_emit: Callable[[Emission], object] | None = None) -> None:
        super().__init__()
        if pace not in ("max", "realtime", "factor"):
            raise ValueError(f"pace={pace!r} is not one of max, realtime, factor")
        if factor <= 0:
            raise ValueError(f"factor={factor!r} must be positive")
        self.fe = frontends
        self.endpoint = endpoint
        self.speed = {"max": 0.0, "realtime": 1.0, "factor": factor}[pace]
        self.truth_sink = truth_sink
        self.ctx = ctx or context()
        self.sleep = sleep or self._interruptible_sleep
        self.clock, self.on_emit = clock, on_emit
        self.sent = 0
        self.paused = False  # run control: hold before the next spill starts
        self._stop_at_spill = False

    def stop_after_spill(self) -> None:
        """End the stream at the next spill boundary (run control's stop: no cut spill)."""
        self._stop_at_spill = True

    async def _interruptible_sleep(self, seconds: float) -> None:
        # a realtime run waits ~12 s between spills: stop() must not wait for that
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def loops(self) -> dict[str, Loop]:
        return {"emit": self._emit}

    async def _emit(self) -> None:
        socks: dict[str, zmq.asyncio.Socket] = {}
        try:
            for b in self.fe.boards:
                s = self.ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, 5000)  # let queued messages go on close
                s.connect(self.endpoint)
                socks[b] = s
            it: Iterator[Emission] = self.fe.run()
            # the first data message pays for loading the generator's kernels (~0.3 s); the
            # schedule starts once it is ready, or the beam would owe that time and send it
            # in a burst, faster than its intensity
            head = await asyncio.to_thread(_head, it)
            start = self.clock() - (head[-1].t_ns / 1e9 / self.speed
                                    if head and self.speed else 0.0)
            it = itertools.chain(head, it)
            last_ns = 0
            while True:
                if self.stopping.is_set():
                    # stopped early: close every stream properly so receivers see its end
                    for end in self.fe.eos(last_ns):
                        if end.src != TRUTH:
                            await socks[end.src].send_multipart(end.frames(), copy=False)
                    break
                em = await asyncio.to_thread(_next, it)
                if em is None:
                    break
                if self.speed:
                    wait = em.t_ns / 1e9 / self.speed - (self.clock() - start)
                    if wait > 0:
                        await self.sleep(wait)
                        if self.stopping.is_set():
                            self.fe.withdraw(em)  # never sent; the ends follow
                            continue
                # the spill boundary is decided once the spill is due: a stop or a pause
                # that came during the wait between spills applies to this spill
                if em.msg.kind is Kind.SPILL_START:
                    if self._stop_at_spill:
                        self.stopping.set()  # not sent: the ends follow on the next turn
                        self.fe.withdraw(em)
                        continue
                    if self.paused:
                        held = self.clock()
                        while self.paused and not self.stopping.is_set() \
                                and not self._stop_at_spill:
                            await self.sleep(0.05)
                        start += self.clock() - held  # a pause delays the schedule
                    if self._stop_at_spill or self.stopping.is_set():
                        self.stopping.set()
                        self.fe.withdraw(em)
                        continue
                last_ns = em.t_ns
                if em.src == TRUTH:
                    if self.truth_sink is not None:
                        self.truth_sink(em.msg)
                else:
                    await socks[em.src].send_multipart(em.frames(), copy=False)
                    self.sent += 1
                if self.on_emit is not None:
                    self.on_emit(em)
        finally:
            for s in socks.values():
                s.close()


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
