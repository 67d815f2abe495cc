"""Replay: re-send a recorded raw run into a running system, every message marked replay.

`schedule()` is the pure part: which messages go, renumbered and marked, and when (seconds
after the start of the replay) at a given speed. `replay()` sends them on a ZeroMQ PUSH
socket connected to the builder's input. Sequence numbers are shifted so that each stream
of the replay starts at 0 while the gaps of the recording are kept (so they are counted
again, not hidden); recorded `eos` markers are dropped unless asked for, so that a replay
into a long-running builder does not end its stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from daq.errors import ConfigError, DaqError
from daq.runfile import RunFileReader
from daq.transport import context
from daq.wire import Kind, Message, encode

Progress = Callable[[int, int], None]  # (bytes sent, bytes to send)


def parse_speed(text: str) -> float:
    """'max' -> 0 (no pacing), 'realtime' -> 1, a positive number -> that factor."""
    if text == "max":
        return 0.0
    if text == "realtime":
        return 1.0
    try:
        v = float(text)
    except ValueError:
        raise ConfigError("speed", text, "realtime, max or a positive factor") from None
    if not 0 < v <= 1e6:
        raise ConfigError("speed", text, "a factor must be within (0, 1e6]")
    return v


def parse_spills(text: str | None) -> tuple[int, int] | None:
    """'A:B' (inclusive), 'A:' or ':B' or 'A' -> a spill range; None -> all."""
    if not text:
        return None
    a, sep, b = text.partition(":")
    try:
        lo = int(a) if a else 0
        hi = (int(b) if b else 2**62) if sep else lo
    except ValueError:
        raise ConfigError("spills", text, "A:B with integer spill numbers") from None
    if lo < 0 or hi < lo:
        raise ConfigError("spills", text, "0 <= A <= B")
    return lo, hi


def _when_ns(msg: Message, t0: dict[int, int]) -> int:
    """Time of a message in the recording: spill start + arrival of its last event."""
    base = t0.get(msg.spill, 0)
    ts = msg.arrays.get("ts")
    if msg.kind is Kind.SLICE and ts is not None and len(ts):
        return base + int(ts[-1])
    return base


@dataclass
class Planned:
    at_s: float  # seconds after the start of the replay (0 when not paced)
    msg: Message
    nbytes: int


def schedule(reader: RunFileReader, *, speed: float = 0.0,
             spills: tuple[int, int] | None = None, send_eos: bool = False,
             run: int | None = None) -> Iterator[Planned]:
    """The messages of a replay, marked replay=true, with their send times.

    `run`: a replay run of its own (run control gave it this number): every message is
    renumbered to it, the recording's run_stop and eos markers are left out, and every
    stream ends with a run_stop of its own, so that the builder closes the replay run."""
    first_seq: dict[str, int] = {}
    next_seq: dict[str, tuple[int, str]] = {}
    t0: dict[int, int] = {}
    start_ns: int | None = None
    at = 0.0
    for msg in reader.messages(spills):
        if msg.kind is Kind.END_OF_STREAM and (not send_eos or run is not None):
            continue
        if run is not None and msg.kind is Kind.RUN_STOP:
            continue
        if msg.kind is Kind.SPILL_START:
            t0.setdefault(msg.spill, int(msg.meta.get("t0_ns", 0) or 0))
        base = first_seq.setdefault(msg.src, msg.seq)
        out = dataclasses.replace(msg, seq=max(msg.seq - base, 0), replay=True,
                                  run=msg.run if run is None else run)
        next_seq[msg.src] = (max(out.seq + 1, next_seq.get(msg.src, (0, ""))[0]), msg.board)
        if speed and msg.kind not in (Kind.RUN_START, Kind.RUN_STOP):
            ns = _when_ns(msg, t0)
            start_ns = ns if start_ns is None else start_ns
            # markers carry no time of their own: never schedule one before its predecessor
            at = max(at, (ns - start_ns) / 1e9 / speed)
        yield Planned(at, out, msg.nbytes)
    if run is not None:
        for src, (seq, board) in next_seq.items():
            yield Planned(at, Message(Kind.RUN_STOP, run=run, seq=seq, src=src, board=board,
                                      replay=True, meta={"reason": "end of the replay"}), 0)


@dataclass
class ReplayResult:
    messages: int = 0
    events: int = 0
    bytes: int = 0
    seconds: float = 0.0


async def replay(path: str | Path, endpoint: str, *, speed: float = 0.0,
                 spills: tuple[int, int] | None = None, send_eos: bool = False,
                 ctx: zmq.asyncio.Context | None = None, progress: Progress | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 run: int | None = None) -> ReplayResult:
    """Send a raw run file to `endpoint` (the builder's input) as a replay (`run`: as the
    replay run run control opened, see `schedule`)."""
    reader = RunFileReader(path)
    total = reader.path.stat().st_size
    sock = (ctx or context()).socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 10_000)  # let the tail of the replay go on close
    sock.connect(endpoint)
    res = ReplayResult()
    first_board = ""
    t_start = time.monotonic()
    try:
        for p in schedule(reader, speed=speed, spills=spills, send_eos=send_eos, run=run):
            wait = p.at_s - (time.monotonic() - t_start)
            if wait > 0:
                await sleep(wait)
            await sock.send_multipart(encode(p.msg), copy=False)
            res.messages += 1
            res.bytes += p.nbytes
            # events, not fragments: each event has one fragment per board
            first_board = first_board or p.msg.board
            res.events += p.msg.count if p.msg.kind is Kind.SLICE and \
                p.msg.board == first_board else 0
            if progress is not None:
                progress(min(reader.report.bytes_read, total), total)
    finally:
        sock.close()
    res.seconds = time.monotonic() - t_start
    return res


async def replay_run(path: str | Path, endpoint: str, settings: Any, *, speed: float = 0.0,
                     spills: tuple[int, int] | None = None,
                     progress: Progress | None = None) -> tuple[ReplayResult, dict[str, Any]]:
    """A replay as a run of its own in a standing system (test mode): run control opens a
    replay run (refused while a live run is open), the file's messages go to the builder
    renumbered to it and marked replay, and run control's stop closes it; returns what was
    sent and run control's stop reply (events and spills as the monitors counted them).
    ReplayRefused when run control refuses the start."""
    from daq.control.client import ControlClient

    async with ControlClient(settings, timeout=max(settings.timeout, 60.0)) as ctl:
        reply = await ctl.run("start", params={"replay": True, "run_type": "test",
                                               "comment": f"replay of {Path(path).name}"})
        if not reply.get("ok"):
            raise ReplayRefused(str(reply.get("reason") or reply.get("error")))
        res = await replay(path, endpoint, speed=speed, spills=spills, progress=progress,
                           run=int(reply["run"]))
        stop = await ctl.run("stop", reason=f"replay of {Path(path).name} sent")
        return res, {**stop, "run": reply["run"]}


class ReplayRefused(DaqError):
    """Run control did not open a replay run (a live run is open, or it is in error)."""
