"""Ingress limits at the services, on real sockets: a message above max_message_bytes is
refused (counted where the inlet sees it), the service goes on, and a frame above the limit
sent to a builder process does not raise its memory (libzmq refuses it before allocating)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.utils.monitor
from daq_fragments import Board, Worker
from prometheus_client import CollectorRegistry

from daq.builder import BuilderConfig, EventBuilder
from daq.builder_service import BuilderService
from daq.geometry import load_geometry
from daq.recorder import RecorderService
from daq.transport import arecv, asend, context, recv
from daq.wire import Kind, Message, encode

GEOM = load_geometry()
LIMIT = 4 << 20


def _streams(events: int) -> dict[str, list[Message]]:
    """One spill of every board, then its end of stream."""
    out = {}
    for i, name in enumerate(GEOM.board_names):
        b = Board(GEOM, name, seed=i)
        out[name] = [*b.spill(0, events, 32),
                     Message(kind=Kind.END_OF_STREAM, src=name, board=name, seq=b.seq)]
    return out


def _oversized(board: str) -> Message:
    """A well-formed slice of `board` whose one array is twice the limit."""
    return Message(kind=Kind.SLICE, src=board, board=board, count=1,
                   arrays={"ts": np.zeros(1, np.int64),
                           "wave": np.zeros(LIMIT, np.int16)}, meta={"mode": "waveform"})


@pytest.mark.asyncio
async def test_builder_counts_too_large_and_bad_messages_by_reason_and_builds_on() -> None:
    """inproc: no MAXMSGSIZE there; the inlet's own check refuses the message whole."""
    cfg = BuilderConfig.parse({"input": "inproc://limits-in", "output": "inproc://limits-out",
                               "timeout_s": 0.3})
    reg = CollectorRegistry()
    core = EventBuilder(GEOM, cfg, calibration="c", default_trigger_config=lambda: {"t": 1})
    svc = BuilderService(core, reg, poll_interval_s=0.02, drain_timeout_s=0.5,
                         max_message_bytes=LIMIT)
    out = context().socket(zmq.PULL)
    out.connect(svc.output_endpoint)
    built: list[Message] = []

    async def collect() -> None:
        while not built or built[-1].kind is not Kind.END_OF_STREAM:
            built.append(await arecv(out))

    collector = asyncio.ensure_future(collect())
    push = context().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(svc.input_endpoint)
    streams = _streams(64)
    try:
        async with svc:
            await asend(push, _oversized("ECAL"))
            await push.send_multipart([b"\x93not msgpack"])
            for i in range(max(map(len, streams.values()))):
                for msgs in streams.values():
                    if i < len(msgs):
                        await asend(push, msgs[i])
            async with asyncio.timeout(20):
                await svc.wait()
                await collector
    finally:
        push.close()
        collector.cancel()
        out.close()
    events = sum(m.count for m in built if m.kind is Kind.SLICE)
    assert events == 64

    def errors(board: str, reason: str) -> float:
        v = reg.get_sample_value("na64_builder_decode_errors_total",
                                 {"board": board, "source": "live", "reason": reason})
        return float(v or 0.0)

    assert errors("ECAL", "too_large") == 1
    assert errors("unknown", "header") == 1
    assert sum(errors(b, r) for b in [*GEOM.board_names, "unknown"]
               for r in ("too_large", "header", "checksum", "content")) == 2


@pytest.mark.asyncio
async def test_recorder_counts_a_too_large_message_and_records_on(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    svc = RecorderService(tmp_path, reg, listen="inproc://limits-rec",
                          max_message_bytes=LIMIT, drain_timeout_s=0.5)
    push = context().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(svc.endpoint)
    start = Worker().run_start()
    try:
        async with svc:
            await asend(push, _oversized("ECAL"))
            await asend(push, start)
            async with asyncio.timeout(10):
                while svc.rec.writer is None:
                    await asyncio.sleep(0.01)
            svc.stop()
            await svc.wait()
    finally:
        push.close()
    assert reg.get_sample_value("na64_recorder_decode_errors_total",
                                {"reason": "too_large"}) == 1
    assert reg.get_sample_value("na64_recorder_decode_errors_total",
                                {"reason": "header"}) == 0
    assert svc.rec.total_records == 1


_BUILDER = textwrap.dedent("""
    import asyncio, sys
    from prometheus_client import CollectorRegistry
    from daq.builder import BuilderConfig, EventBuilder
    from daq.builder_service import BuilderService
    from daq.geometry import load_geometry
    from daq.transport import close_transport

    def peak_rss() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    async def main() -> None:
        cfg = BuilderConfig.parse({"input": "tcp://127.0.0.1:*",
                                   "output": "tcp://127.0.0.1:*", "timeout_s": 0.3})
        core = EventBuilder(load_geometry(), cfg, calibration="c",
                            default_trigger_config=lambda: {"t": 1})
        svc = BuilderService(core, CollectorRegistry(), max_message_bytes=int(sys.argv[1]))
        async with svc:
            print(svc.input_endpoint, svc.output_endpoint, peak_rss(), flush=True)
            await svc.wait()
        print(peak_rss(), flush=True)

    asyncio.run(main())
    close_transport()
""")


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("limit", [LIMIT, 1 << 30], ids=["limit-4MiB", "limit-1GiB"])
def test_a_256_mib_frame_does_not_raise_a_builder_process_memory(limit: int) -> None:
    """With a 4 MiB limit the builder's peak resident memory (VmHWM) grows by less than a
    quarter of the frame, and the builder builds what follows. With a limit above the frame
    (the control: the measure sees the frame when it is taken in) it grows by the frame."""
    frame = 256 << 20
    ctx = zmq.Context()
    with subprocess.Popen([sys.executable, "-c", _BUILDER, str(limit)],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            inp, outp, before = proc.stdout.readline().split()
            out = ctx.socket(zmq.PULL)
            out.connect(outp)
            # one connection, in order: the frame, then the boards' streams
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 5000)
            push.connect(inp)
            _send_frame(push, frame, refused=limit < frame)
            for msgs in _streams(64).values():
                for m in msgs:
                    push.send_multipart(encode(m))
            out.setsockopt(zmq.RCVTIMEO, 30_000)
            built: list[Message] = []
            while not built or built[-1].kind is not Kind.END_OF_STREAM:
                built.append(recv(out))
            after = int(proc.stdout.readline())
            assert proc.wait(timeout=30) == 0
            for s in (push, out):
                s.close(0)
        finally:
            if proc.poll() is None:
                proc.kill()
            ctx.destroy(0)
    assert sum(m.count for m in built if m.kind is Kind.SLICE) == 64
    growth = after - int(before)
    print(f"limit {limit >> 20} MiB: builder peak RSS {int(before) >> 20} MiB -> "
          f"{after >> 20} MiB after a {frame >> 20} MiB frame")
    if limit < frame:
        assert growth < frame // 4
    else:
        assert growth >= frame


def _send_frame(push: zmq.Socket, size: int, *, refused: bool) -> None:
    """Send one frame of `size` bytes; when it is to be refused, wait until the receiver
    has dropped the connection (libzmq's refusal; the socket then connects again)."""
    mon = push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    mon.setsockopt(zmq.RCVTIMEO, 60_000)
    try:
        push.send(bytes(size), copy=False)
        if refused:
            assert zmq.utils.monitor.recv_monitor_message(mon)["event"] == \
                zmq.EVENT_DISCONNECTED
    finally:
        push.disable_monitor()
        mon.close(0)
