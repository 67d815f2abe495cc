"""Replay: re-send a run file into a running system, every message marked replay.

`schedule()` is the pure part: which messages go, renumbered and marked, and when (seconds
after the start of the replay) at a given speed. `replay()` sends them on a ZeroMQ PUSH
socket connected to the builder's input and waits until they are delivered. Sequence
numbers are shifted so that each stream of the replay starts at 0 while the gaps of the
recording are kept (so they are counted again, not hidden); recorded `eos` markers are
dropped unless asked for, so that a replay into a long-running builder does not end its
stream.

A builder takes board streams. A raw file holds them; a recorded file (accepted events)
is turned back into them (daq.analysis.boards: its events renumbered, the receiving
system's trigger deciding); a truth or features file has none and is refused.

Delivery (docs/analysis.md, "Replay"): a PUSH socket has no acknowledgement, so `replay()`
counts a message delivered once it has left this process for a receiver that was
connected: it sends only on a completed connection (ZMQ_IMMEDIATE), gives up when the
receiver takes nothing for `timeout_s`, and at the end closes with a linger of `timeout_s`
on a context of its own: the context ends before the linger runs out only when every
queued message was written to the connection. A receiver that disconnects meanwhile
leaves delivery unconfirmed. inproc endpoints share the caller's context; there a sent
message is already in the receiver's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from daq.analysis.boards import board_streams, unconvertible
from daq.analysis.errors import AnalysisError
from daq.analysis.source import FileKind, kind_of
from daq.errors import ConfigError, DaqError
from daq.geometry import BOARD_NAMES
from daq.markers import RunStop, SpillStart
from daq.runfile import RunFileReader
from daq.transport import context
from daq.wire import Kind, Message, encode

Progress = Callable[[int, int], None]  # (bytes sent, bytes to send)
_ENDPOINT = re.compile(r"^(tcp|ipc|inproc)://\S+$")
_SNDHWM = 16  # messages queued towards the receiver: small, so that a stall shows quickly
_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


def check_endpoint(endpoint: str) -> str:
    """A ZeroMQ endpoint with its scheme, or ConfigError saying what one looks like."""
    if not _ENDPOINT.match(endpoint or ""):
        raise ConfigError("--to", endpoint, "a ZeroMQ endpoint with its scheme: "
                          "tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    return endpoint


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


def check_configuration(path: str | Path, geometry: str, calibration: str) -> str:
    """Compare the geometry and calibration hashes `path` was recorded with (its header)
    with the receiving system's. Another geometry: ReplayError naming both, as nothing of
    the file can be read with another channel map (the builder refuses its boards,
    hash_mismatch, decision 0024). Another calibration: a note naming both, as the replay
    is decided with the system's on purpose (that is how a new calibration is applied to
    old data). "" when alike, or when the file names none (taken on trust)."""
    head = RunFileReader(path).header
    theirs, cal = str(head.get("geometry") or ""), str(head.get("calibration") or "")
    if theirs and geometry and theirs != geometry:
        raise ReplayError(f"{path} was recorded with geometry {theirs}, the system's is "
                          f"{geometry}: its channels cannot be read with another channel "
                          "map (the builder would refuse every board as hash_mismatch); "
                          "nothing was sent")
    if cal and calibration and cal != calibration:
        return (f"{path} was recorded with calibration {cal}; the replay is decided with "
                f"the system's, {calibration}")
    return ""


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
    for msg in board_messages(reader, spills):
        if msg.kind is Kind.END_OF_STREAM and (not send_eos or run is not None):
            continue
        if run is not None and msg.kind is Kind.RUN_STOP:
            continue
        if msg.kind is Kind.SPILL_START:
            t0.setdefault(msg.spill, SpillStart.of(msg).t0_ns)
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
            stop = RunStop("end of the replay").to_meta()
            yield Planned(at, Message(Kind.RUN_STOP, run=run, seq=seq, src=src, board=board,
                                      replay=True, meta=stop), 0)


def board_messages(reader: RunFileReader, spills: tuple[int, int] | None = None
                   ) -> Iterator[Message]:
    """The board streams of a file as recorded: a raw file's messages as they are, a
    recorded or built file's events turned back into board streams; ReplayError for a
    file with none (truth, features)."""
    it = reader.messages(spills)
    head: list[Message] = []
    kind = None
    for m in it:
        head.append(m)
        kind = kind_of(m)
        if kind is not None:
            break
    stream = itertools.chain(head, it)
    if kind in (FileKind.RECORDED, FileKind.BUILT):
        try:
            why = unconvertible(head[-1])
            if why:
                raise AnalysisError(why)
            yield from board_streams(stream, BOARD_NAMES)
        except AnalysisError as e:
            raise ReplayError(f"{reader.path} is a {kind} file whose {e}: nothing can be "
                              "replayed into a builder") from None
    elif kind in (FileKind.TRUTH, FileKind.FEATURES):
        raise ReplayError(f"{reader.path} is a {kind} file: it holds no board data, so "
                          "nothing can be replayed into a builder (replay a raw or a "
                          "recorded file)")
    else:
        yield from stream


@dataclass
class ReplayResult:
    messages: int = 0  # sent
    events: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: every message sent reached a connected receiver within the timeout (module docstring)
    delivered: bool = False
    #: why not, naming the endpoint and the timeout; "" when delivered
    reason: str = ""


async def replay(path: str | Path, endpoint: str, *, speed: float = 0.0,
                 spills: tuple[int, int] | None = None, send_eos: bool = False,
                 ctx: zmq.asyncio.Context | None = None, progress: Progress | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 run: int | None = None, timeout_s: float = 10.0) -> ReplayResult:
    """Send a run file to `endpoint` (the builder's input) as a replay and wait until it
    is delivered (`run`: as the replay run run control opened, see `schedule`). The result
    says what was sent and whether all of it was delivered (module docstring)."""
    check_endpoint(endpoint)
    reader = RunFileReader(path)
    plan = schedule(reader, speed=speed, spills=spills, send_eos=send_eos, run=run)
    head = next(plan, None)  # a file that cannot be replayed is refused before connecting
    plan = itertools.chain([head] if head is not None else [], plan)
    total = reader.path.stat().st_size
    inproc = endpoint.startswith("inproc://")
    own = None if inproc else zmq.asyncio.Context()
    sock = (ctx or context() if own is None else own).socket(zmq.PUSH)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only towards a receiver that is there
    sock.setsockopt(zmq.SNDHWM, _SNDHWM)
    peer = _Peer(sock, endpoint) if own is not None else None
    sock.connect(endpoint)
    res = ReplayResult()
    first_board = ""
    t_start = time.monotonic()
    try:
        if peer is not None and not await peer.connected(timeout_s):
            res.reason = (f"nothing accepted a connection at {endpoint} within {timeout_s:g} "
                          "s: no message delivered")
            res.seconds = time.monotonic() - t_start
            return res
        for p in plan:
            wait = p.at_s - (time.monotonic() - t_start)
            if wait > 0:
                await sleep(wait)
            try:
                await asyncio.wait_for(sock.send_multipart(encode(p.msg), copy=False),
                                       timeout_s)
            except TimeoutError:
                gone = " (it disconnected)" if peer is not None and peer.disconnects else ""
                res.reason = (f"the receiver at {endpoint} took nothing for {timeout_s:g} s "
                              f"after {res.messages} messages{gone}: the replay gave up")
                break
            except zmq.Again:  # it left between pyzmq's poll and its send: no pipe to it
                res.reason = (f"the receiver at {endpoint} went away after {res.messages} "
                              "messages: the replay gave up")
                break
            res.messages += 1
            res.bytes += p.nbytes
            # events, not fragments: each event has one fragment per board
            first_board = first_board or p.msg.board
            res.events += p.msg.count if p.msg.kind is Kind.SLICE and \
                p.msg.board == first_board else 0
            if progress is not None:
                progress(min(reader.report.bytes_read, total), total)
    finally:
        drained = await _close(sock, own, peer, timeout_s if not res.reason else 0.0)
    if not res.reason and peer is not None and peer.disconnects:
        res.reason = (f"the receiver at {endpoint} disconnected during the replay: delivery "
                      f"of the {res.messages} messages sent is not confirmed")
    elif not res.reason and not drained:
        res.reason = (f"the receiver at {endpoint} had not taken every message when the "
                      f"{timeout_s:g} s timeout ran out: {res.messages} sent, the last ones "
                      "not delivered")
    res.delivered = not res.reason
    res.seconds = time.monotonic() - t_start
    return res


class _Peer:
    """Connection events of a socket (its monitor): handshakes and disconnects."""

    def __init__(self, sock: zmq.asyncio.Socket, endpoint: str) -> None:
        self.mon = sock.get_monitor_socket(_EVENTS)
        self.sock = sock
        self.up = asyncio.Event()
        self.disconnects = 0
        self.task = asyncio.create_task(self._watch(), name=f"replay-monitor {endpoint}")

    async def _watch(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        while True:
            ev = parse_monitor_message(await self.mon.recv_multipart())
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up.set()
            elif ev["event"] == zmq.EVENT_DISCONNECTED and self.up.is_set():
                self.disconnects += 1

    async def connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.up.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        await asyncio.sleep(0)  # let the watcher take events already queued
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.mon.close(linger=0)


async def _close(sock: zmq.asyncio.Socket, own: zmq.asyncio.Context | None,
                 peer: _Peer | None, linger_s: float) -> bool:
    """Close the socket; with a context of its own, True when everything queued left
    before the linger ran out (the context ends early only then)."""
    if peer is not None:
        await peer.stop()
    if own is None:
        sock.close(linger=int(linger_s * 1000) if linger_s else 0)
        return True
    sock.close(linger=int(linger_s * 1000))
    t0 = time.monotonic()
    await asyncio.to_thread(own.term)
    # a linger that ran out ends the context at linger_s: what was queued was dropped
    return not linger_s or time.monotonic() - t0 < linger_s - 0.02


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


class ReplayError(DaqError):
    """A file cannot be replayed into a builder (it holds no board data)."""
