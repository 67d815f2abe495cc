"""Reproduce a ZeroMQ data loss that bears on every sender that closes its socket once its
stream is done (replay, the front ends): a PUSH that sent everything and closed, with
LINGER set, while its peer's receive queue was full, loses the last messages on ipc. The
sender's context considers them delivered (its termination returns at once); the receiver
never gets them. Compare libzmq issue 4660 (open).

It is why the builder's `input_hwm` default stays at ZeroMQ's 1000: with 16, a replay over
one connection lost its tail (the end of stream among it) and the builder waited forever.

    python scripts/zmq_linger_loss.py     # exit status 1 when messages were lost

Each variant sends 300 messages of 5 kB to a PULL over ipc, closes the sender, and only then
starts reading.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

import zmq
import zmq.asyncio

N = 300


async def variant(rcvhwm: int) -> int:
    ctx = zmq.asyncio.Context()
    ep = f"ipc://{tempfile.mkdtemp()}/x"
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, rcvhwm)
    pull.bind(ep)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 10_000)
    push.connect(ep)
    for i in range(N):
        await push.send_multipart([b"%d" % i, b"x" * 5000, b"y" * 100], copy=False)
    push.close()
    got, t0 = 0, time.monotonic()
    while got < N and time.monotonic() - t0 < 3:
        if await pull.poll(100):
            await pull.recv_multipart(copy=False)
            got += 1
    pull.close(linger=0)
    ctx.term()
    return got


def main() -> int:
    print(f"libzmq {zmq.zmq_version()}, pyzmq {zmq.pyzmq_version()}")
    lost = 0
    for rcvhwm in (16, 1000):
        got = asyncio.run(variant(rcvhwm))
        lost += N - got
        print(f"receiver RCVHWM {rcvhwm:5d}: {got} of {N} arrived")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
