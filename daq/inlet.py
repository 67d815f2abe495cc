"""Inlets and outlets: how every data-path service receives and sends wire messages.

An `Inlet` is the receive side of a stream, an `Outlet` the send side; each comes as a
ZeroMQ socket (`ZmqInlet`, `ZmqOutlet`: tcp, ipc and inproc) and in memory (`memory_pipe`:
a bounded queue, the same interface, for tests that need no sockets). Every service takes
its input through an inlet, so the ingress limits are the same everywhere:

- a maximum message size, `max_message_bytes`. On a ZeroMQ socket it is libzmq's
  MAXMSGSIZE: libzmq reads a frame's length before it allocates the frame and drops the
  connection of a peer whose frame is larger (the frame is never allocated; libzmq does
  not report why it dropped the connection, so such a refusal is not counted here). The
  inlet also checks the total of every message it hands out, for what MAXMSGSIZE does not
  cover (inproc, and a message of many frames each below the limit), counted `too_large`.
- refused messages counted by a bounded set of reasons (`REASONS`) and logged at most once
  per (peer, reason) per `log_interval_s`, naming the peer, the board and the reason, with
  the number of lines suppressed since the last one (`Refusals`).
- one drain policy at stop (`drain`): take what still arrives until the input has been
  quiet for `quiet_s`, the handler says the stream ended, or `timeout_s` has passed.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import zmq
import zmq.asyncio

from daq.curve import SocketHook
from daq.errors import WireError
from daq.wire import Message, decode

#: why a message was refused at an ingress: the reasons of daq.wire.decode, and too_large
WIRE_REASONS = ("truncated", "header", "version", "kind", "shape", "dtype", "checksum", "meta")
REASONS = (*WIRE_REASONS, "too_large")
#: the default max_message_bytes of a socket made without one (daq.stack computes the
#: topology's own from its geometry: see IngressSection)
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
#: (peer, reason) pairs whose last log time is remembered; beyond it the oldest are forgotten
_MAX_LOG_KEYS = 1024

log = logging.getLogger("na64.ingress")


@dataclass(frozen=True, slots=True)
class Received:
    """One message as it came in: its frames (buffers) and where it came from: the peer's
    address, or the first zmq.Frame (its address is read only when a refusal names it)."""

    frames: list[Any]
    origin: str | zmq.Frame = ""

    @property
    def peer(self) -> str:
        return _peer(self.origin) if isinstance(self.origin, zmq.Frame) else self.origin

    @property
    def nbytes(self) -> int:
        return sum(memoryview(f).nbytes for f in self.frames)


def reason_of(error: WireError) -> str:
    """The bounded label of a decode error (an unforeseen reason counts as `header`)."""
    return error.reason if error.reason in WIRE_REASONS else "header"


def peek_board(frames: Sequence[Any]) -> str:
    """The board named by an undecodable message's header, if the header itself parses."""
    with contextlib.suppress(Exception):
        h = msgpack.unpackb(frames[0], raw=False, max_bin_len=0, max_ext_len=0)
        if isinstance(h, dict) and isinstance(h.get("board"), str):
            return str(h["board"])
    return "unknown"


class Refusals:
    """What one service refused at its ingress: counted by (reason, board), logged rarely.

    `boards` bounds the board label (any other name counts as "unknown"); `on_refused`
    is called with (reason, board) for each refusal (a service's own counter). A flood of
    bad messages logs one line per (peer, reason) per `log_interval_s`; the next line says
    how many were suppressed in between.
    """

    def __init__(self, service: str, *, boards: Collection[str] = (),
                 on_refused: Callable[[str, str], object] | None = None,
                 log_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.boards = frozenset(boards)
        self.on_refused = on_refused
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: collections.Counter[tuple[str, str]] = collections.Counter()

    def by_reason(self) -> dict[str, int]:
        out = dict.fromkeys(REASONS, 0)
        for (reason, _), n in self.counts.items():
            out[reason] += n
        return out

    def refuse(self, reason: str, *, peer: str = "", board: str = "unknown",
               detail: str = "") -> None:
        """Count one refused message and log it unless a line for (peer, reason) is recent."""
        if reason not in REASONS:
            raise ValueError(f"refusal reason {reason!r} is not one of {REASONS}")
        label = board if board in self.boards else "unknown"
        self.counts[(reason, label)] += 1
        if self.on_refused is not None:
            self.on_refused(reason, label)
        self._log(reason, peer, board, detail)

    def decode(self, rx: Received, *, verify_crc: bool = True,
               forwarded: Collection[str] = ()) -> Message | None:
        """The message, or None when it is malformed (then refused: counted and logged).
        `forwarded`: arrays passed on unread, whose CRCs the next hop checks (wire.decode)."""
        try:
            return decode(rx.frames, verify_crc=verify_crc, forwarded=forwarded)
        except WireError as e:
            self.refuse(reason_of(e), peer=rx.peer, board=peek_board(rx.frames),
                        detail=str(e))
            return None

    def _log(self, reason: str, peer: str, board: str, detail: str) -> None:
        key = (peer, reason)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.log_interval_s:
            self._suppressed[key] += 1
            return
        if len(self._last) >= _MAX_LOG_KEYS:  # many peers: forget the oldest
            oldest = min(self._last, key=self._last.__getitem__)
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        log.warning("%s refused a message: reason=%s peer=%s board=%.32r "
                    "(%d more from this peer for this reason suppressed): %.200s",
                    self.service, reason, peer or "?", board, suppressed, detail)


# --- inlets ----------------------------------------------------------------------------


class Inlet(abc.ABC):
    """The receive side of a stream; see the module docstring.

    `take()` hands out what waits now (never blocks), `wait()` waits until something
    does. A message above `max_message_bytes` is refused (too_large) and never handed out.
    """

    endpoint: str
    max_message_bytes: int
    refusals: Refusals

    @abc.abstractmethod
    async def wait(self, timeout_s: float) -> bool:
        """Until a message waits (True) or `timeout_s` passed (False)."""

    @abc.abstractmethod
    def waiting(self) -> bool:
        """A message waits now."""

    @abc.abstractmethod
    def _next(self) -> Received | None:
        """The next message as received, or None when none waits."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop receiving (what was not taken is dropped)."""

    def take(self) -> Received | None:
        """The next message within the size limit, or None when none waits."""
        while (rx := self._next()) is not None:
            size = rx.nbytes
            if size <= self.max_message_bytes:
                return rx
            self.refusals.refuse("too_large", peer=rx.peer, board=peek_board(rx.frames),
                                 detail=f"{size} bytes, limit {self.max_message_bytes}")
        return None


def _socket(ctx: zmq.asyncio.Context, kind: int, endpoint: str,
            options: Mapping[zmq.SocketOption, int], hook: SocketHook | None,
            bind: bool) -> tuple[zmq.asyncio.Socket, str]:
    """A socket with `options`, then `hook` (CURVE, daq.curve), bound or connected; its
    real endpoint (tcp://...:0 binds to a free port). Closed again if any step fails."""
    sock = ctx.socket(kind)
    try:
        for opt, value in options.items():
            sock.setsockopt(opt, value)
        if hook is not None:
            hook(sock, endpoint)
        if bind:
            sock.bind(endpoint)
            return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.connect(endpoint)
        return sock, endpoint
    except BaseException:
        sock.close(linger=0)
        raise


class ZmqInlet(Inlet):
    """A PULL socket: bound (a service that receives from many) or connected (a worker).

    Options go on before bind/connect: LINGER 0, RCVHWM (per connection) when given,
    MAXMSGSIZE, then `hook` (CURVE server options, daq.curve).
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, refusals: Refusals, *,
                 bind: bool = True, hwm: int | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 hook: SocketHook | None = None) -> None:
        self.refusals = refusals
        self.max_message_bytes = max_message_bytes
        options = {zmq.LINGER: 0, zmq.MAXMSGSIZE: max_message_bytes}
        if hwm is not None:
            options[zmq.RCVHWM] = hwm
        self.socket, self.endpoint = _socket(ctx, zmq.PULL, endpoint, options, hook, bind)

    async def wait(self, timeout_s: float) -> bool:
        return bool(await self.socket.poll(max(int(timeout_s * 1000), 0)))

    def waiting(self) -> bool:
        return bool(int(self.socket.get(zmq.EVENTS)) & zmq.POLLIN)

    def _next(self) -> Received | None:
        # DONTWAIT: an already resolved future, the frames or zmq.Again
        ready = self.socket.recv_multipart(zmq.DONTWAIT, copy=False)
        try:
            frames = cast("asyncio.Future[list[zmq.Frame]]", ready).result()
        except zmq.Again:
            return None
        return Received([f.buffer for f in frames], frames[0])

    def close(self) -> None:
        self.socket.close(linger=0)


def _peer(frame: zmq.Frame) -> str:
    """The sender's address (tcp: its IP; ipc: its process), "" where libzmq has none
    (inproc)."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return ""


class _Pipe:
    """A bounded in-memory queue of messages between one MemoryOutlet and one MemoryInlet."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self.maxsize = maxsize
        self.items: collections.deque[list[Any]] = collections.deque()
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False


class MemoryInlet(Inlet):
    """The receive side of a `memory_pipe`."""

    def __init__(self, pipe: _Pipe, refusals: Refusals, max_message_bytes: int) -> None:
        self._pipe = pipe
        self.refusals = refusals
        self.max_message_bytes = max_message_bytes
        self.endpoint = f"memory://{pipe.name}"

    async def wait(self, timeout_s: float) -> bool:
        if self._pipe.items:
            return True
        self._pipe.readable.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pipe.readable.wait(), max(timeout_s, 0.0))
        return bool(self._pipe.items)

    def waiting(self) -> bool:
        return bool(self._pipe.items)

    def _next(self) -> Received | None:
        p = self._pipe
        if not p.items:
            return None
        frames = p.items.popleft()
        p.writable.set()
        return Received([memoryview(f) for f in frames], self.endpoint)

    def close(self) -> None:
        self._pipe.closed = True
        self._pipe.items.clear()
        self._pipe.writable.set()  # a sender waiting for space gives up


# --- outlets ---------------------------------------------------------------------------


class Outlet(abc.ABC):
    """The send side of a stream. `send` waits while the stream is full (backpressure);
    given a `deadline` (on the outlet's clock) it gives up then and returns False."""

    endpoint: str

    @abc.abstractmethod
    async def _put(self, frames: list[Any]) -> None:
        """Queue the frames, waiting while the stream is full."""

    @abc.abstractmethod
    def close(self, linger_s: float | None = None) -> None:
        """Close; what is queued is sent for up to `linger_s` (None: the outlet's own)."""

    async def send(self, frames: list[Any], *, deadline: float | None = None,
                   clock: Callable[[], float] = time.monotonic) -> bool:
        """Send one encoded message; False when `deadline` passed first (not sent)."""
        if deadline is None:
            await self._put(frames)
            return True
        try:
            await asyncio.wait_for(self._put(frames), max(deadline - clock(), 0.0))
        except TimeoutError:
            return False
        return True


class ZmqOutlet(Outlet):
    """A PUSH socket, bound or connected, with SNDHWM and LINGER as given, then `hook`
    (CURVE options, daq.curve) before bind/connect."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, *, bind: bool = False,
                 hwm: int | None = None, linger_s: float = 0.0,
                 hook: SocketHook | None = None) -> None:
        options = {zmq.LINGER: int(linger_s * 1000)}
        if hwm is not None:
            options[zmq.SNDHWM] = hwm
        self.socket, self.endpoint = _socket(ctx, zmq.PUSH, endpoint, options, hook, bind)

    async def _put(self, frames: list[Any]) -> None:
        await self.socket.send_multipart(frames, copy=False)

    def close(self, linger_s: float | None = None) -> None:
        self.socket.close(linger=None if linger_s is None else int(linger_s * 1000))


class MemoryOutlet(Outlet):
    """The send side of a `memory_pipe`."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self.endpoint = f"memory://{pipe.name}"

    async def _put(self, frames: list[Any]) -> None:
        p = self._pipe
        while len(p.items) >= p.maxsize and not p.closed:
            p.writable.clear()
            await p.writable.wait()
        if p.closed:
            return  # nobody reads any more: dropped, as a PUSH to a closed peer
        p.items.append(list(frames))
        p.readable.set()

    def close(self, linger_s: float | None = None) -> None:
        """Nothing to flush: what is queued stays readable."""


def memory_pipe(name: str, refusals: Refusals, *, maxsize: int = 1000,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                ) -> tuple[MemoryOutlet, MemoryInlet]:
    """An outlet and the inlet it feeds, in this process's memory (bounded: `maxsize`
    messages, then `send` waits)."""
    if maxsize < 1:
        raise ValueError(f"maxsize={maxsize} must be at least 1")
    pipe = _Pipe(name, maxsize)
    return MemoryOutlet(pipe), MemoryInlet(pipe, refusals, max_message_bytes)


# --- the drain policy ------------------------------------------------------------------


async def drain(inlet: Inlet, handle: Callable[[Received], Awaitable[bool]], *,
                quiet_s: float = 0.25, timeout_s: float = 5.0,
                clock: Callable[[], float] = time.monotonic) -> int:
    """At stop: take what still arrives (the senders' own drain) until the input has been
    quiet for `quiet_s`, `handle` returned True (the stream ended), or `timeout_s` passed.
    Returns how many messages were taken."""
    deadline = clock() + timeout_s
    taken = 0
    while clock() < deadline and await inlet.wait(min(quiet_s, max(deadline - clock(), 0.0))):
        while (rx := inlet.take()) is not None:
            taken += 1
            if await handle(rx):
                return taken
            if clock() >= deadline:
                return taken
    return taken


def slice_bytes(events: int, samples: int, channels: int, boards: int) -> int:
    """Bytes of the largest built slice of `events` events: int16 waveforms of every
    channel of every board, int64 time stamps, one 'missing' byte per board and event."""
    return events * (2 * samples * channels + 8 + boards)


def limit_for(largest: int) -> int:
    """A message size limit with room for the largest legitimate message: twice it (its
    header, a few more events) rounded up to a whole MiB."""
    return math.ceil(2 * largest / (1 << 20)) << 20
