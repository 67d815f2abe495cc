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

import zmq
import zmq.asyncio

from daq.errors import ConfigError
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
             spills: tuple[int, int] | None = None, send_eos: bool = False
             ) -> Iterator[Planned]:
    """The messages of a replay, marked replay=true, with their send times."""
    first_seq: dict[str, int] = {}
    t0: dict[int, int] = {}
    start_ns: int | None = None
    at = 0.0
    for msg in reader.messages(spills):
        if msg.kind is Kind.END_OF_STREAM and not send_eos:
            continue
        if msg.kind is Kind.SPILL_START:
            t0.setdefault(msg.spill, int(msg.meta.get("t0_ns", 0) or 0))
        base = first_seq.setdefault(msg.src, msg.seq)
        out = dataclasses.replace(msg, seq=max(msg.seq - base, 0), replay=True)
        if speed and msg.kind not in (Kind.RUN_START, Kind.RUN_STOP):
            ns = _when_ns(msg, t0)
            start_ns = ns if start_ns is None else start_ns
            # markers carry no time of their own: never schedule one before its predecessor
            at = max(at, (ns - start_ns) / 1e9 / speed)
        yield Planned(at, out, msg.nbytes)


@dataclass
class ReplayResult:
    messages: int = 0
    events: int = 0
    bytes: int = 0
    seconds: float = 0.0


async def replay(path: str | Path, endpoint: str, *, speed: float = 0.0,
                 spills: tuple[int, int] | None = None, send_eos: bool = False,
                 ctx: zmq.asyncio.Context | None = None, progress: Progress | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> ReplayResult:
    """Send a raw run file to `endpoint` (the builder's input) as a replay."""
    reader = RunFileReader(path)
    total = reader.path.stat().st_size
    sock = (ctx or context()).socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 10_000)  # let the tail of the replay go on close
    sock.connect(endpoint)
    res = ReplayResult()
    t_start = time.monotonic()
    try:
        for p in schedule(reader, speed=speed, spills=spills, send_eos=send_eos):
            wait = p.at_s - (time.monotonic() - t_start)
            if wait > 0:
                await sleep(wait)
            await sock.send_multipart(encode(p.msg), copy=False)
            res.messages += 1
            res.bytes += p.nbytes
            res.events += p.msg.count if p.msg.kind is Kind.SLICE else 0
            if progress is not None:
                progress(min(reader.report.bytes_read, total), total)
    finally:
        sock.close()
    res.seconds = time.monotonic() - t_start
    return res
