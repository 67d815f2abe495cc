"""Event builder throughput beside bare ZeroMQ moving the same frames, in the same run.

Run:  python benchmarks/bench_builder.py [--spills 4] [--events 32768] [--slice 4096]

Five board streams (PUSH, tcp loopback, one thread) feed either
  bare:    a Python relay (PULL recv_multipart(copy=False) -> PUSH send_multipart), or
  builder: BuilderService (decode, CRC check, align, build, encode with CRC, send),
and a consumer thread PULLs the output until the end. Both pipelines move the same
pre-encoded board frames; the figure is events/s end to end and MB/s of board payload.
Feature mode (~1 kB/event) and waveform mode (~7 kB/event). A benchmark, not a test: it
asserts nothing, and the figure depends on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "daq"))
from daq_fragments import Board

from daq.builder import BuilderConfig, EventBuilder
from daq.builder_service import BuilderService
from daq.geometry import load_geometry
from daq.wire import Kind, Message, encode

GEOM = load_geometry()


def _streams(mode: str, spills: int, events: int, se: int) -> tuple[list[list[Any]], int]:
    """Pre-encoded frames, board streams interleaved as on the wire; payload bytes."""
    boards = [Board(GEOM, n, mode=mode, seed=i) for i, n in enumerate(GEOM.board_names)]
    per = [[m for s in range(spills) for m in b.spill(s, events, se)] for b in boards]
    for b, msgs in zip(boards, per, strict=True):
        msgs.append(Message(kind=Kind.END_OF_STREAM, src=b.name, board=b.name, seq=b.seq))
    out, nbytes = [], 0
    for i in range(len(per[0])):
        for msgs in per:
            frames = encode(msgs[i])
            nbytes += sum(memoryview(f).nbytes for f in frames[1:])
            out.append(frames)
    return out, nbytes


def _send(ctx: zmq.Context, endpoint: str, frames: list[list[Any]]) -> None:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 10_000)
    s.connect(endpoint)
    for f in frames:
        s.send_multipart(f, copy=False)
    s.close()


def _consume(ctx: zmq.Context, endpoint: str, until: int, done: list[float]) -> None:
    s = ctx.socket(zmq.PULL)
    s.connect(endpoint)
    n = 0
    while n < until:
        msg = s.recv_multipart(copy=False)
        n += 1
        del msg
    done.append(time.perf_counter())
    s.close()


def bare(frames: list[list[Any]]) -> float:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("tcp://127.0.0.1:*")
    push.bind("tcp://127.0.0.1:*")
    done: list[float] = []
    cons = threading.Thread(target=_consume, args=(
        ctx, push.getsockopt_string(zmq.LAST_ENDPOINT), len(frames), done))
    cons.start()
    t0 = time.perf_counter()
    snd = threading.Thread(target=_send, args=(
        ctx, pull.getsockopt_string(zmq.LAST_ENDPOINT), frames))
    snd.start()
    for _ in range(len(frames)):
        push.send_multipart(pull.recv_multipart(copy=False), copy=False)
    cons.join()
    snd.join()
    pull.close()
    push.close()
    ctx.term()
    return done[0] - t0


async def _builder(frames: list[list[Any]]) -> float:
    cfg = BuilderConfig.parse({"input": "tcp://127.0.0.1:*", "output": "tcp://127.0.0.1:*",
                               "output_hwm": 1000})
    b = EventBuilder(GEOM, cfg, default_trigger_config=lambda: {"bench": 1})
    ctx = zmq.Context()
    done: list[float] = []
    async with BuilderService(b, CollectorRegistry()) as svc:
        cons = threading.Thread(target=_consume_until_eos, args=(
            ctx, svc.output_endpoint, done))
        cons.start()
        t0 = time.perf_counter()
        snd = threading.Thread(target=_send, args=(ctx, svc.input_endpoint, frames))
        snd.start()
        await svc.wait()
        await asyncio.to_thread(cons.join)
        await asyncio.to_thread(snd.join)
    ctx.term()
    return done[0] - t0


def _consume_until_eos(ctx: zmq.Context, endpoint: str, done: list[float]) -> None:
    s = ctx.socket(zmq.PULL)
    s.connect(endpoint)
    while True:
        msg = s.recv_multipart(copy=False)
        if msgpack.unpackb(msg[0].buffer)["kind"] == "eos":
            break
    done.append(time.perf_counter())
    s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spills", type=int, default=4)
    ap.add_argument("--events", type=int, default=32768, help="events per spill")
    ap.add_argument("--slice", type=int, default=4096, help="events per slice")
    args = ap.parse_args()
    print(f"{'mode':<9} {'events':>8} {'kB/ev':>6} {'bare ev/s':>12} {'builder ev/s':>13} "
          f"{'bare MB/s':>10} {'bld MB/s':>9} {'ratio':>6}")
    for mode, scale in (("feature", 1), ("waveform", 4)):
        events = args.events // scale
        frames, nbytes = _streams(mode, args.spills, events, args.slice // scale)
        n = args.spills * events
        t_bare = min(bare(frames) for _ in range(2))
        t_bld = min(asyncio.run(_builder(frames)) for _ in range(2))
        print(f"{mode:<9} {n:>8} {nbytes / n / 1e3:>6.2f} {n / t_bare:>12.3g} "
              f"{n / t_bld:>13.3g} {nbytes / t_bare / 1e6:>10.0f} {nbytes / t_bld / 1e6:>9.0f} "
              f"{t_bare / t_bld:>6.2f}")


if __name__ == "__main__":
    main()
