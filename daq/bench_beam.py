"""The benchmark's beam: one spill of every board generated and checksummed once, sent
again as fast as the builder takes it, by the bare sender and by `BenchFrontEnd`, a
standing front end under run control (`python -m daq.bench frontend ...`, daq.bench)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from daq.lifecycle import Lifecycle, RunContext, Transition
from daq.markers import RunStop
from daq.service import next_or_stop

SENDER_HWM = 16
#: the benchmark's transport between processes (both the pipeline and bare ZeroMQ)
TRANSPORT = os.environ.get("NA64_BENCH_TRANSPORT", "ipc")
#: events per slice in each mode (NA64_BENCH_FEATURE_SLICE / NA64_BENCH_WAVE_SLICE to study
#: the slice size; docs/performance.md)
SLICE_EVENTS = {"feature": int(os.environ.get("NA64_BENCH_FEATURE_SLICE", 65536)),
                "waveform": int(os.environ.get("NA64_BENCH_WAVE_SLICE", 4096))}


# --- the data: one simulated spill of every board, re-sent as spills 0..n-1 ---------------


def spill_messages(mode: str, events: int, seed: int = 7) -> list[tuple[str, Any]]:
    """(board, Message) of one spill of `events` events, in sending order, without truth."""
    from daq.geometry import load_calibration, load_geometry
    from daq.wire import Kind
    from simulators.config import SimConfig
    from simulators.frontend import FrontEnds
    from simulators.generator import Simulator

    g = load_geometry()
    cal = load_calibration(g)
    rate = 6e6 / 4.8
    # beam-running readout: zero-suppressed in both modes; slices of ~13 ms (feature) and
    # ~3 ms (waveform) of beam at 1.25 MHz
    sim = Simulator(SimConfig.parse({"mode": mode, "generated_s": events / rate, "seed": seed,
                                     "zero_suppress": mode == "waveform",
                                     # max-of-32 minus a 4-sample pedestal: 10 ADC is ~3 sigma
                                     # of its noise (6 is for one feature amplitude)
                                     "zs_adc": 10.0 if mode == "waveform" else 6.0,
                                     "slice_events": SLICE_EVENTS[mode]}), g, cal)
    out = []
    for em in FrontEnds(sim, spills=1).run():
        if em.src == "truth" or em.msg.kind in (Kind.END_OF_STREAM, Kind.RUN_STOP):
            continue
        out.append((em.src, em.msg))
    return out


def _respill(msgs: list[tuple[str, Any]], spills: int) -> Iterator[tuple[str, Any]]:
    from daq.wire import Kind

    seq: dict[str, int] = {}
    for k in range(spills):
        for board, m in msgs:
            if m.kind is Kind.RUN_START and k > 0:
                continue
            m.spill = k
            m.seq = seq.get(board, 0)
            seq[board] = m.seq + 1
            yield board, m


def sender(endpoint: str, mode: str, events: int, spills: int, bare: bool) -> dict[str, Any]:
    """Connect one PUSH per board and send; returns when every message is handed to zmq."""
    import msgpack

    from daq.wire import Kind, Message, checksums, encode

    msgs = spill_messages(mode, events)
    boards = sorted({b for b, _ in msgs})
    ctx = zmq.Context()
    socks = {}
    for b in boards:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, SENDER_HWM)
        s.setsockopt(zmq.LINGER, -1)
        s.connect(endpoint)
        socks[b] = s
    time.sleep(0.5)  # let every connection come up before timing starts
    # a front end checksums a slice once: the CRCs (of the arrays, which re-sending as
    # another spill does not change) are computed once per slice, the header per message
    crcs = {id(m): checksums(m) if not bare else 0 for _, m in msgs}
    sent = 0
    t0 = time.time()
    for b, m in _respill(msgs, spills):
        head = msgpack.packb(m.header(crcs[id(m)]), use_bin_type=True)
        socks[b].send_multipart([head, *m.arrays.values()], copy=False)
        if m.kind is Kind.SLICE and b == "BEAM":
            sent += m.count
    for b in boards:  # end every stream (the builder finishes the run on all eos)
        socks[b].send_multipart(encode(Message(Kind.END_OF_STREAM, board=b, src=b)), copy=False)
    t_sent = time.time()
    for s in socks.values():
        s.close()
    ctx.term()
    return {"t0": t0, "t_sent": t_sent, "events": sent}


# --- the bench's front end: a standing front end under run control ---------------------


@dataclass(frozen=True)
class Prepared:
    """One board message of the pre-generated spill, encoded once: its header fields (the
    arrays' CRCs among them) and its array frames. Sent again as another run, spill and
    sequence number, only the small header is encoded again; the CRCs still hold, so the
    builder and the workers check every byte end to end, as with real boards."""

    board: str
    header: dict[str, Any]
    frames: tuple[Any, ...]
    #: events it adds to the run's count (slices of the BEAM board)
    events: int

    def head(self, run: int, spill: int, seq: int) -> bytes:
        return msgpack.packb({**self.header, "run": run, "spill": spill, "seq": seq},
                             use_bin_type=True)


def prepare(msgs: list[tuple[str, Any]]) -> tuple[list[Prepared], list[Prepared]]:
    """(each board's run_start, the messages of one spill) of `spill_messages`."""
    from daq.wire import Kind, encode

    starts: list[Prepared] = []
    spill: list[Prepared] = []
    for board, m in msgs:
        head, *frames = encode(m)
        p = Prepared(board, msgpack.unpackb(head, raw=False), tuple(frames),
                     m.count if m.kind is Kind.SLICE and board == "BEAM" else 0)
        (starts if m.kind is Kind.RUN_START else spill).append(p)
    return starts, spill


class BenchFrontEnd:
    """The bench's front end as a participant of run control (daq.agent.Participant).

    Sends nothing until `start N`; then, once its gate opens (`gate`: a directory where
    `go-N` appears; None: at once), each board's run_start, the prepared spill again and
    again as spills 0.. of run N (`max_spills` of them, or until `stop`: it ends at a spill
    boundary), and each board's run_stop; `run_ended` tells run control it took its
    spills. Every stream ends (eos) only at shutdown (SIGTERM, or run control's shutdown).
    What it did per run (`records`: first message sent, last data message handed to
    ZeroMQ, events, spills) goes to `gate/frontend.jsonl` as it happens.
    """

    def __init__(self, endpoint: str, starts: list[Prepared], spill: list[Prepared], *,
                 gate: Path | None = None, ctx: zmq.asyncio.Context | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from daq.transport import context

        self.lifecycle = Lifecycle()
        self.endpoint = endpoint
        self.starts, self.spill_msgs = starts, spill
        self.boards = sorted({p.board for p in (*starts, *spill)})
        self.gate = gate
        self.ctx = ctx or context()
        self.clock = clock
        self.agent: Any = None  # daq.agent.Agent, set by whoever connects it
        self.stopping = asyncio.Event()
        self.records: list[dict[str, Any]] = []
        self.paused = False
        self.holding = False
        self.sent = 0  # messages
        self.spill = -1  # last spill started in the run under way
        self.run_events = 0
        self._stop_at_spill = False
        self._runs: asyncio.Queue[RunContext] = asyncio.Queue()
        self._streaming: RunContext | None = None
        self._streamed = asyncio.Event()  # the run under way has sent its run_stop
        self._streamed.set()
        self._seq: dict[str, int] = {}
        self._last_run = 0

    # --- the Participant protocol ---------------------------------------------------------

    async def on_transition(self, transition: Transition, context: RunContext | None,
                            args: dict[str, Any]) -> dict[str, Any]:
        if transition is Transition.START:
            assert context is not None
            self._stop_at_spill = self.paused = False
            self._streamed.clear()
            self._runs.put_nowait(context)
        elif transition is Transition.STOP:
            self._stop_at_spill, self.paused = True, False
            await self._streamed.wait()  # the spill under way ends, run_stop is sent
            return {"spills": self.spill + 1, "events": self.run_events}
        elif transition is Transition.PAUSE:
            self.paused = True
        elif transition is Transition.RESUME:
            self.paused = False
        elif transition is Transition.SHUTDOWN:
            self.stopping.set()
        return {}

    def status(self) -> dict[str, Any]:
        last = next((r for r in reversed(self.records) if r["event"] == "sent"), None)
        return {"spill": self.spill, "run_events": self.run_events, "paused": self.paused,
                "messages_sent": self.sent, "streaming": self._streaming is not None,
                "holding": self.holding, "last_run_sent": last}

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("the bench front end takes no settings")

    # --- sending ------------------------------------------------------------------------

    def _ended(self) -> bool:
        return self._stop_at_spill or self.stopping.is_set()

    def _record(self, rec: dict[str, Any]) -> None:
        self.records = [*self.records[-63:], rec]
        if self.gate is not None:
            with (self.gate / "frontend.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")

    async def emit(self) -> None:
        """Take run after run until shutdown, then end every stream."""
        from daq.wire import Kind, Message, encode

        socks: dict[str, zmq.asyncio.Socket] = {}
        for b in self.boards:
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, SENDER_HWM)
            s.setsockopt(zmq.LINGER, 10_000)  # the last messages go before the socket closes
            s.connect(self.endpoint)
            socks[b] = s
        try:
            while (ctx := await self._next_run()) is not None:
                self._streaming = ctx
                try:
                    rec = await self._run(ctx, socks)
                finally:
                    self._streaming = None
                    self._streamed.set()
                self._record(rec)
                if rec["how"] == "ended" and self.agent is not None:
                    self.agent.notify("run_ended", run=ctx.run, spills=rec["spills"],
                                      events=rec["events"])
            for b in self.boards:  # shutdown: every stream ends
                end = Message(Kind.END_OF_STREAM, run=self._last_run, seq=self._seq.get(b, 0),
                              src=b, board=b)
                await socks[b].send_multipart(encode(end), copy=False)
        finally:
            for s in socks.values():
                s.close()

    async def _next_run(self) -> RunContext | None:
        return await next_or_stop(self._runs, self.stopping)

    async def _hold(self, run: int) -> None:
        """Until the bench lets run `run` go (or it is stopped meanwhile)."""
        if self.gate is None:
            return
        self.holding = True
        self._record({"event": "holding", "run": run, "t": self.clock()})
        go = self.gate / f"go-{run}"
        try:
            while not go.exists() and not self._ended():
                await asyncio.sleep(0.01)
        finally:
            self.holding = False

    async def _run(self, ctx: RunContext, socks: dict[str, zmq.asyncio.Socket]
                   ) -> dict[str, Any]:
        """Send run `ctx.run`; returns its record ("how": ended, stopped or shutdown)."""
        from daq.wire import Kind, Message, encode

        run = self._last_run = ctx.run
        self.spill, self.run_events = -1, 0
        await self._hold(run)
        seq = self._seq = dict.fromkeys(self.boards, 0)

        async def send(p: Prepared, spill: int) -> None:
            s = seq[p.board]
            seq[p.board] = s + 1
            self.sent += 1
            await socks[p.board].send_multipart([p.head(run, spill, s), *p.frames],
                                                copy=False)

        t0 = self.clock()
        for p in self.starts:
            await send(p, 0)
        how = "ended"
        while ctx.max_spills is None or self.spill + 1 < ctx.max_spills:
            while self.paused and not self._ended():
                await asyncio.sleep(0.05)
            if self._ended():
                how = "shutdown" if self.stopping.is_set() else "stopped"
                break
            self.spill += 1
            for p in self.spill_msgs:
                await send(p, self.spill)
                self.run_events += p.events
        t_sent = self.clock()
        for b in self.boards:
            stop = RunStop(f"{self.spill + 1} spills taken ({how})")
            end = Message(Kind.RUN_STOP, run=run, spill=max(self.spill, 0), seq=seq[b], src=b,
                          board=b, meta=stop.to_meta())
            seq[b] += 1
            self.sent += 1
            await socks[b].send_multipart(encode(end), copy=False)
        return {"event": "sent", "run": run, "t0": t0, "t_sent": t_sent, "how": how,
                "events": self.run_events, "spills": self.spill + 1}


async def serve_frontend(fe: BenchFrontEnd, control: str) -> None:
    """Run `fe` under run control at `control` until SIGTERM/SIGINT or a shutdown."""
    from daq.agent import Agent
    from daq.service import ignore_stop_signals, on_stop_signals
    from daq.transport import close_transport

    fe.agent = Agent(control, "frontend", fe, ctx=fe.ctx)
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, fe.stopping.set)
    done = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fe.agent.run(done), name="frontend.agent")
            try:
                await fe.emit()
            finally:
                done.set()  # the agent says goodbye
    finally:
        ignore_stop_signals(loop)
        await asyncio.to_thread(close_transport)


# --- bare ZeroMQ twins of builder, worker, sinks ---------------------------------------
