"""Reproduce a ZeroMQ data loss that bears on every sender that closes its socket once its
stream is done (replay, the front ends): a PUSH that sent everything and closed, with
LINGER set, while its peer's receive queue was full, loses the last messages on ipc. The
sender's context considers them delivered (its termination returns at once); the receiver
never gets them. Compare libzmq issue 4660 (open).

It is why the builder's `input_hwm` default stays at ZeroMQ's 1000: with 16, a replay over
one connection lost its tail (the end of stream among it) and the builder waited forever.

    python scripts/zmq_linger_loss.py                   # exit status 1 when messages were lost
    python scripts/zmq_linger_loss.py --cross-process   # as in use: sender in its own process

Each variant sends 300 messages of 5 kB to a PULL over ipc, closes the sender, and only then
starts reading. With --cross-process the sender is its own process, which exits after its
last message (as `na64daq replay`, a front end or the builder at the end of a run do), while
the receiver keeps reading, 0.5 ms per message: 3000 messages, ipc and loopback TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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


def _sender(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 10_000)
    push.connect(endpoint)
    for i in range(n):
        push.send_multipart([b"%d" % i, b"x" * 5000, b"y" * 100], copy=False)
    ctx.destroy(linger=10_000)  # as daq.transport.close_transport does at exit


def cross_process(transport: str, rcvhwm: int, n: int = 3000, delay_s: float = 5e-4) -> int:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, rcvhwm)
    pull.bind(f"ipc://{tempfile.mkdtemp()}/x" if transport == "ipc" else "tcp://127.0.0.1:*")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    proc = multiprocessing.get_context("spawn").Process(target=_sender, args=(endpoint, n))
    proc.start()
    got, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 60:
        if pull.poll(500 if got else 10_000):
            pull.recv_multipart()
            got += 1
            time.sleep(delay_s)
        elif not proc.is_alive():
            break
    proc.join()
    pull.close(linger=0)
    ctx.term()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cross-process", action="store_true")
    args = ap.parse_args()
    print(f"libzmq {zmq.zmq_version()}, pyzmq {zmq.pyzmq_version()}")
    lost = 0
    if args.cross_process:
        for transport, rcvhwm in (("ipc", 4), ("ipc", 16), ("ipc", 1000), ("tcp", 4),
                                  ("tcp", 16)):
            got = cross_process(transport, rcvhwm)
            lost += 3000 - got
            print(f"{transport} receiver RCVHWM {rcvhwm:5d}: {got} of 3000 arrived")
        return 1 if lost else 0
    for rcvhwm in (16, 1000):
        got = asyncio.run(variant(rcvhwm))
        lost += N - got
        print(f"receiver RCVHWM {rcvhwm:5d}: {got} of {N} arrived")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
