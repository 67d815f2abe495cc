"""Move wire messages over ZeroMQ sockets, sync and asyncio, without copying arrays.

The same functions serve tcp://, ipc:// and inproc:// endpoints; inproc is the in-memory
transport of the single-process demo and of most tests. Services receive and send through
daq.inlet (its size limit, counted refusals and drain policy); the helpers here serve
tests and tools.
"""

from __future__ import annotations

from typing import Any

import zmq
import zmq.asyncio

from daq.wire import Message, decode, encode

_shared_context: zmq.asyncio.Context | None = None


def context() -> zmq.asyncio.Context:
    """The process-wide asyncio ZeroMQ context (inproc endpoints need one shared context)."""
    global _shared_context
    if _shared_context is None or _shared_context.closed:
        _shared_context = zmq.asyncio.Context()
    return _shared_context


def close_transport(linger_s: float = 10.0) -> None:
    """Send what zmq still queues, then end its threads: call before a process exits.

    Messages are sent zero-copy: libzmq's I/O thread reads the buffers of Python objects
    after send() has returned. A context left alive at exit lets the interpreter free those
    buffers while libzmq still sends them (seen as CRC failures downstream and EFAULT
    aborts). destroy() closes every socket with a bounded linger and terminates.
    """
    global _shared_context
    if _shared_context is not None and not _shared_context.closed:
        _shared_context.destroy(linger=int(linger_s * 1000))
    _shared_context = None


def send(sock: zmq.Socket, msg: Message, *, with_crc: bool = True, flags: int = 0) -> None:
    """Send `msg` on a blocking socket."""
    sock.send_multipart(encode(msg, with_crc=with_crc), flags=flags, copy=False)


def recv(sock: zmq.Socket, *, flags: int = 0, verify_crc: bool = True) -> Message:
    """Receive and decode one message from a blocking socket (raises WireError if malformed)."""
    frames = sock.recv_multipart(flags=flags, copy=False)
    return decode([f.buffer for f in frames], verify_crc=verify_crc)


async def asend(sock: zmq.asyncio.Socket, msg: Message, *, with_crc: bool = True,
                flags: int = 0) -> None:
    """Send `msg` on an asyncio socket."""
    await sock.send_multipart(encode(msg, with_crc=with_crc), flags=flags, copy=False)


async def arecv_frames(sock: zmq.asyncio.Socket) -> list[Any]:
    """Receive raw frames (buffers) from an asyncio socket; decode separately to count errors."""
    frames = await sock.recv_multipart(copy=False)
    return [f.buffer for f in frames]


async def arecv(sock: zmq.asyncio.Socket, *, verify_crc: bool = True) -> Message:
    """Receive and decode one message from an asyncio socket."""
    return decode(await arecv_frames(sock), verify_crc=verify_crc)
