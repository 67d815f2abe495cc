"""The builder service on real ZeroMQ sockets (tcp loopback and ipc), metrics over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio
from daq_fragments import Board
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from daq.builder import BuilderConfig, EventBuilder
from daq.builder_service import BuilderService
from daq.errors import WireError
from daq.metrics import MetricsServer
from daq.transport import arecv, asend, context
from daq.wire import Kind, Message, decode, encode

from daq.geometry import load_geometry  # isort: skip

GEOM = load_geometry()
NAMES = GEOM.board_names
pytestmark = pytest.mark.asyncio


def _service(inp: str, out: str, **kw: object) -> tuple[BuilderService, CollectorRegistry]:
    cfg = BuilderConfig.parse({"input": inp, "output": out, "timeout_s": 0.3, **kw})
    reg = CollectorRegistry()
    b = EventBuilder(GEOM, cfg, calibration="c", default_trigger_config=lambda: {"t": 1})
    return BuilderService(b, reg, poll_interval_s=0.02, drain_timeout_s=0.5), reg


def _streams(spills: int, events: int, skip: dict[str, int] | None = None,
             eos: bool = True) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for i, n in enumerate(NAMES):
        b = Board(GEOM, n, seed=i)
        msgs: list[Message] = []
        for s in range(spills):
            part = b.spill(s, events, 32)
            if skip and n in skip and s == spills - 1:
                part = part[: 1 + skip[n]]
            msgs += part
        if eos and not (skip and n in skip):
            msgs.append(Message(kind=Kind.END_OF_STREAM, src=n, board=n, seq=b.seq))
        out[n] = msgs
    return out


async def _send_all(endpoint: str, streams: dict[str, list[Message]]) -> None:
    ctx = context()
    socks = {}
    for n in streams:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.connect(endpoint)
        socks[n] = s
    try:
        for i in range(max(map(len, streams.values()))):
            for n, msgs in streams.items():
                if i < len(msgs):
                    await asend(socks[n], msgs[i])
    finally:
        for s in socks.values():
            s.close()


async def _collect(endpoint: str, until: Kind, timeout: float = 20.0) -> list[Message]:
    sock = context().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    got: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            while not got or got[-1].kind is not until:
                got.append(await arecv(sock))
    finally:
        sock.close()
    return got


def _scrape(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    srv = MetricsServer(reg)
    try:
        text = urllib.request.urlopen(srv.url, timeout=5).read().decode()
    finally:
        srv.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_complete_events_in_complete_events_out(transport: str, tmp_path: Path) -> None:
    if transport == "tcp":
        inp, out = "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"
    else:
        inp, out = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    svc, reg = _service(inp, out)
    async with svc:
        collector = asyncio.create_task(_collect(svc.output_endpoint, Kind.END_OF_STREAM))
        await _send_all(svc.input_endpoint, _streams(2, 150))
        got = await collector
        await svc.wait()
    slices = [m for m in got if m.kind is Kind.SLICE]
    assert sum(s.count for s in slices) == 300 and len(slices) == 10
    assert all(not s.arrays["missing"].any() for s in slices)
    ends = [m for m in got if m.kind is Kind.SPILL_END]
    assert [(e.meta["events"], e.meta["slices"]) for e in ends] == [(150, 5), (150, 5)]
    assert [m.seq for m in got] == list(range(len(got)))
    m = _scrape(reg)
    assert m[("na64_builder_events_total", (("source", "live"),))] == 300
    assert m[("na64_builder_fragments_total", (("board", "ECAL"), ("source", "live")))] == 10
    assert m[("na64_builder_incomplete_events_total",
              (("board", "HCAL"), ("source", "live")))] == 0
    assert m[("na64_builder_replay", ())] == 0


async def test_board_stopped_mid_spill_gives_exact_counts() -> None:
    svc, reg = _service("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    async with svc:
        collector = asyncio.create_task(_collect(svc.output_endpoint, Kind.SPILL_END))
        # ECAL dies after 2 of the 5 slices of spill 0 (100 + 60 = 160 events)
        await _send_all(svc.input_endpoint, _streams(1, 160, skip={"ECAL": 2}, eos=False))
        got = await collector
        m = _scrape(reg)
        svc.stop()
        await svc.wait()
    slices = [s for s in got if s.kind is Kind.SLICE]
    assert sum(s.count for s in slices) == 160
    flagged = sum(int((s.arrays["missing"] != 0).sum()) for s in slices)
    assert flagged == 160 - 64
    assert got[-1].meta["incomplete"] == {"ECAL": 96}
    key = ("na64_builder_incomplete_events_total", (("board", "ECAL"), ("source", "live")))
    assert m[key] == 96


async def test_reordered_duplicated_and_garbage_input_is_counted() -> None:
    svc, reg = _service("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    streams = _streams(1, 128, eos=True)
    hcal = streams["HCAL"]
    # swap two HCAL slices on the wire and send one of them twice
    hcal[1], hcal[2] = hcal[2], hcal[1]
    hcal.insert(3, hcal[1])
    async with svc:
        collector = asyncio.create_task(_collect(svc.output_endpoint, Kind.END_OF_STREAM))
        raw = context().socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 2000)
        raw.connect(svc.input_endpoint)
        await raw.send_multipart([b"\x93not msgpack at all", b"x"])
        raw.close()
        await _send_all(svc.input_endpoint, streams)
        got = await collector
        await svc.wait()
        m = _scrape(reg)
    slices = [s for s in got if s.kind is Kind.SLICE]
    assert sum(s.count for s in slices) == 128 and not any(s.arrays["missing"].any()
                                                           for s in slices)
    lab = (("board", "HCAL"), ("source", "live"))
    assert m[("na64_builder_duplicates_total", lab)] == 1
    assert m[("na64_builder_out_of_order_total", lab)] == 1
    assert m[("na64_builder_seq_gaps_total", lab)] == 0
    assert m[("na64_builder_decode_errors_total",
              (("board", "unknown"), ("reason", "header"), ("source", "live")))] == 1


async def test_detector_values_are_checked_end_to_end_and_what_the_builder_reads_here(
) -> None:
    """The builder forwards a board's detector values unread: a value frame damaged on the
    way in reaches the next hop, whose decode refuses it by name against the front end's
    CRC. What the builder reads (here HCAL's channel numbers) it checks itself and refuses."""
    svc, reg = _service("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    streams = _streams(1, 128, eos=True)
    frames = {n: [encode(m) for m in msgs] for n, msgs in streams.items()}

    def damage(board: str, array: str) -> None:
        msg = streams[board][1]  # the first slice
        i = 1 + list(msg.arrays).index(array)
        bad = np.array(frames[board][1][i], copy=True)
        bad.view(np.uint8)[0] ^= 0xFF
        frames[board][1][i] = bad

    damage("ECAL", "hit_amp")
    damage("HCAL", "hit_ch")
    async with svc:
        sock = context().socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(svc.output_endpoint)
        raw = context().socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 2000)
        raw.connect(svc.input_endpoint)
        for i in range(max(map(len, frames.values()))):
            for fr in frames.values():
                if i < len(fr):
                    await raw.send_multipart(fr[i])
        raw.close()
        got, refused = [], []
        async with asyncio.timeout(20):
            while not got or got[-1] is not Kind.END_OF_STREAM:
                try:
                    got.append(decode(await sock.recv_multipart()).kind)
                except WireError as e:
                    refused.append(str(e))
                    got.append(Kind.SLICE)
        sock.close()
        await svc.wait()
        m = _scrape(reg)
    assert len(refused) == 1 and "'ECAL.hit_amp'" in refused[0]
    assert m[("na64_builder_decode_errors_total",
              (("board", "HCAL"), ("reason", "checksum"), ("source", "live")))] == 1
    assert m.get(("na64_builder_decode_errors_total",
                  (("board", "ECAL"), ("reason", "checksum"), ("source", "live"))), 0) == 0


async def test_slow_downstream_backpressure_then_shedding_is_bounded() -> None:
    svc, reg = _service("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", max_pending_events=64,
                        shed_after_s=0.2, output_hwm=1)
    async with svc:
        # nobody reads the output: the builder must not grow without bound
        await _send_all(svc.input_endpoint, _streams(1, 32 * 40, eos=False))
        await asyncio.sleep(1.0)
        peak = svc.queued_events
        m = _scrape(reg)
        svc.stop()
    assert peak <= 64 + 32
    assert m[("na64_builder_shed_events_total", (("source", "live"),))] > 0
    assert m[("na64_builder_backpressure_seconds_total", ())] >= 0.2
    assert svc.builder.stats["live"].shed + svc.builder.stats["live"].events \
        + svc.queued_events + svc.builder.pending_events >= 32 * 40 - 32 * 4


async def test_backpressure_is_bounded_in_bytes() -> None:
    """Waveform slices: the queue stops at max_pending_bytes long before max_pending_events
    (the bench once held 2e6 events, ~4 GB, in its builder this way)."""
    bound = 1 << 20
    svc, reg = _service("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", max_pending_events=10**6,
                        max_pending_bytes=bound, shed_after_s=600, output_hwm=1)
    streams = {n: Board(GEOM, n, seed=i, mode="waveform").spill(0, 32 * 60, 32)
               for i, n in enumerate(NAMES)}
    async with svc:
        # nobody reads the output, and nothing is shed: the input stops instead
        sender = asyncio.create_task(_send_all(svc.input_endpoint, streams))
        await asyncio.sleep(1.5)
        queued, events = svc.queued_bytes, svc.queued_events
        m = _scrape(reg)
        svc.stop()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    built = max(m_.nbytes for m_ in streams["ECAL"]) * len(NAMES)  # a generous slice
    assert bound <= queued <= bound + built
    assert events < 32 * 60 // 2
    assert m[("na64_builder_queued_bytes", ())] == queued
    assert m[("na64_builder_backpressure", ())] == 1.0
    assert m[("na64_builder_shed_events_total", (("source", "live"),))] == 0


async def test_congestion_and_shedding_last_until_the_input_has_caught_up() -> None:
    """While fragments wait at the input the front ends are held back: a queue that drained
    in between does not end congestion, nor shedding; taking what waits does."""
    # inproc: once sent, every fragment waits in the pipe (no TCP stream still arriving)
    svc, _ = _service("inproc://relieve-in", "inproc://relieve-out", max_pending_events=64,
                      shed_after_s=0.2)
    try:
        await _send_all(svc.input_endpoint, _streams(1, 32 * 4, eos=False))
        async with asyncio.timeout(10):
            while not await svc.inlet.wait(0.01):
                pass
        svc._congested_since = 1.0  # held back since t = 1, the queue now empty
        svc.builder.shedding = True
        svc._relieve()
        assert svc._congested_since == 1.0 and svc.builder.shedding  # input not caught up
        async with asyncio.timeout(10):
            while not svc._caught_up() or svc.builder.shedding:
                svc._take_waiting()  # every fragment, shed: the queue stays empty
                await asyncio.sleep(0.01)
        assert svc._congested_since is None
        st = svc.builder.stats["live"]
        assert st.shed == 32 * 4 and st.events == 0 and svc.queued_events == 0
        # a queue over half its bound keeps shedding on even when caught up
        svc.builder.shedding, svc.queued_events = True, 40
        svc._relieve()
        assert svc.builder.shedding
    finally:
        svc.inlet.close()
        svc.outlet.close()


async def test_an_eos_that_names_its_board_only_in_src_ends_the_input() -> None:
    """A front end that leaves `board` empty on its eos (the field is the stream's `src`,
    as the core reads every record): the builder counts it toward its end of input, as it
    counts that board's other records; an eos naming no board of the geometry does not."""
    svc, reg = _service("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    streams = _streams(1, 64)
    eos = streams["ECAL"][-1]
    streams["ECAL"][-1] = Message(kind=Kind.END_OF_STREAM, src="ECAL", board="", seq=eos.seq)
    streams["stray"] = [Message(kind=Kind.END_OF_STREAM, src="nobody", board="")]
    async with svc:
        collector = asyncio.create_task(_collect(svc.output_endpoint, Kind.END_OF_STREAM))
        await _send_all(svc.input_endpoint, streams)
        got = await collector
        await svc.wait()
    assert sum(m.count for m in got if m.kind is Kind.SLICE) == 64
    assert [m.kind for m in got][-2:] == [Kind.RUN_STOP, Kind.END_OF_STREAM]
    m = _scrape(reg)
    assert m[("na64_builder_decode_errors_total",
              (("board", "unknown"), ("reason", "content"), ("source", "live")))] == 1
