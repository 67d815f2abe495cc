"""daq.inlet: the in-memory and ZeroMQ inlets keep one contract; refusals are counted by a
bounded set of reasons and logged rate-limited (injected time); one drain policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import pytest_asyncio
import zmq
import zmq.utils.monitor

from daq.inlet import (
    REASONS,
    Inlet,
    Outlet,
    Received,
    Refusals,
    ZmqInlet,
    ZmqOutlet,
    drain,
    limit_for,
    memory_pipe,
    slice_bytes,
)
from daq.transport import context
from daq.wire import Kind, Message, decode, encode

LIMIT = 1 << 16  # the smallest limit a topology accepts
Pair = tuple[Outlet, Inlet]


def _msg(i: int, n: int = 4) -> Message:
    return Message(kind=Kind.SLICE, src="ECAL", board="ECAL", seq=i, first=i * n, count=n,
                   arrays={"ts": np.arange(n, dtype=np.int64) + i})


def _pair(kind: str, tag: str, refusals: Refusals) -> Pair:
    if kind == "memory":
        return memory_pipe(tag, refusals, maxsize=64, max_message_bytes=LIMIT)
    ep = f"inproc://inlet-{tag}" if kind == "inproc" else "tcp://127.0.0.1:*"
    inlet = ZmqInlet(context(), ep, refusals, max_message_bytes=LIMIT)
    return ZmqOutlet(context(), inlet.endpoint, linger_s=1.0), inlet


@pytest_asyncio.fixture(params=["memory", "inproc", "tcp"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Pair, Refusals]]:
    refusals = Refusals("test", boards=["ECAL"])
    outlet, inlet = _pair(request.param, request.node.name.replace("[", "-")[:-1], refusals)
    try:
        yield (outlet, inlet), refusals
    finally:
        outlet.close(0)
        inlet.close()


async def _take(inlet: Inlet, n: int, timeout_s: float = 10.0) -> list[Received]:
    got: list[Received] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < n:
            if await inlet.wait(0.1):
                while (rx := inlet.take()) is not None:
                    got.append(rx)
    return got


# --- the contract: every inlet/outlet pair ----------------------------------------------


@pytest.mark.asyncio
async def test_messages_arrive_whole_and_in_order(pair: tuple[Pair, Refusals]) -> None:
    (outlet, inlet), refusals = pair
    assert not await inlet.wait(0.05) and inlet.take() is None and not inlet.waiting()
    for i in range(20):
        assert await outlet.send(encode(_msg(i)))
    got = await _take(inlet, 20)
    msgs = [decode(rx.frames) for rx in got]
    assert [m.seq for m in msgs] == list(range(20))
    assert all(np.array_equal(m.arrays["ts"], np.arange(4) + m.seq) for m in msgs)
    assert inlet.take() is None and sum(refusals.counts.values()) == 0


@pytest.mark.asyncio
async def test_a_message_above_the_limit_is_refused_counted_and_the_next_passes(
        pair: tuple[Pair, Refusals]) -> None:
    (outlet, inlet), refusals = pair
    # frames each below the limit, the message above it: only the inlet's own check sees it
    big = _msg(0, n=LIMIT // 8 // 2)
    frames = [*encode(big), np.zeros(LIMIT // 2, np.uint8)]
    assert sum(memoryview(f).nbytes for f in frames) > LIMIT
    await outlet.send(frames)
    await outlet.send(encode(_msg(1)))
    (rx,) = await _take(inlet, 1)
    assert decode(rx.frames).seq == 1
    assert refusals.counts == {("too_large", "ECAL"): 1}


@pytest.mark.asyncio
async def test_decode_counts_each_reason_by_board(pair: tuple[Pair, Refusals]) -> None:
    (outlet, inlet), refusals = pair
    bad = _bad_messages()
    for frames in bad.values():
        await outlet.send(frames)
    await outlet.send(encode(_msg(7)))
    got = await _take(inlet, len(bad) + 1)
    decoded = [refusals.decode(rx) for rx in got]
    assert [m.seq for m in decoded if m is not None] == [7]
    want = {(r, "unknown" if r == "header" else "ECAL"): 1 for r in bad}
    assert refusals.counts == want
    assert refusals.by_reason() == {r: int(r in bad) for r in REASONS}


def _bad_messages() -> dict[str, list[Any]]:
    """One message per decode reason (each the one that reason names)."""
    good = encode(_msg(0))
    head = msgpack.unpackb(good[0])

    def with_header(**changes: Any) -> list[Any]:
        return [msgpack.packb({**head, **changes}), *good[1:]]

    corrupt = np.array(good[1], copy=True)
    corrupt[0] += 1
    return {
        "truncated": [msgpack.packb({k: v for k, v in head.items() if k != "seq"}), *good[1:]],
        "header": [b"\x93not msgpack at all"],
        "version": with_header(v=99),
        "kind": with_header(kind="no-such-kind"),
        "shape": with_header(count=5),
        "dtype": with_header(arrays=[["ts", "<c16", [4]]]),
        "checksum": [good[0], corrupt],
    }


# --- ZeroMQ: libzmq's MAXMSGSIZE ---------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_frame_above_the_limit_drops_the_connection_before_allocation() -> None:
    """libzmq refuses a frame above MAXMSGSIZE from its length, before allocating it: the
    peer is disconnected, the frame never reaches the inlet, others go on."""
    refusals = Refusals("test")
    inlet = ZmqInlet(context(), "tcp://127.0.0.1:*", refusals, max_message_bytes=LIMIT)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    mon = push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    mon.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        push.connect(inlet.endpoint)
        push.send(bytes(4 * LIMIT))
        event = await asyncio.to_thread(zmq.utils.monitor.recv_monitor_message, mon)
        assert event["event"] == zmq.EVENT_DISCONNECTED
        push.send_multipart(encode(_msg(3)))  # the same socket reconnects
        (rx,) = await _take(inlet, 1)
        assert decode(rx.frames).seq == 3 and rx.peer == "127.0.0.1"
        assert inlet.take() is None
    finally:
        push.disable_monitor()
        mon.close(0)
        push.close(0)
        ctx.term()
        inlet.close()


# --- in memory: bounded ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_pipe_is_bounded_and_a_send_gives_up_at_its_deadline() -> None:
    t = [0.0]
    outlet, inlet = memory_pipe("bounded", Refusals("test"), maxsize=2)
    assert await outlet.send([b"a"]) and await outlet.send([b"b"])
    # full: a send with a deadline already passed does not wait
    assert not await outlet.send([b"c"], deadline=0.0, clock=lambda: t[0])
    waiting = asyncio.ensure_future(outlet.send([b"d"]))
    await asyncio.sleep(0)
    assert not waiting.done()  # backpressure: waits for space
    assert inlet.take() is not None
    assert await asyncio.wait_for(waiting, 5.0)
    assert [bytes(rx.frames[0]) for rx in await _take(inlet, 2)] == [b"b", b"d"]
    inlet.close()


# --- refusals: bounded reasons, rate-limited log lines -----------------------------------


def test_refusal_log_is_rate_limited_per_peer_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    t = [100.0]
    seen: list[tuple[str, str]] = []
    r = Refusals("builder", boards=["ECAL"], log_interval_s=10.0, clock=lambda: t[0],
                 on_refused=lambda reason, board: seen.append((reason, board)))
    with caplog.at_level(logging.WARNING, logger="na64.ingress"):
        for _ in range(5):
            r.refuse("checksum", peer="10.0.0.7", board="ECAL", detail="bad crc")
        r.refuse("checksum", peer="10.0.0.8", board="HCAL?", detail="bad crc")
        r.refuse("shape", peer="10.0.0.7", board="ECAL")
        t[0] += 9.9
        r.refuse("checksum", peer="10.0.0.7", board="ECAL")  # still within the interval
        t[0] += 0.2
        r.refuse("checksum", peer="10.0.0.7", board="ECAL")
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 4
    assert "reason=checksum peer=10.0.0.7 board='ECAL' (0 more" in lines[0]
    assert "peer=10.0.0.8 board='HCAL?'" in lines[1]
    assert "reason=shape peer=10.0.0.7" in lines[2]
    assert "reason=checksum peer=10.0.0.7 board='ECAL' (5 more" in lines[3]
    # every refusal counted, the board label bounded to the known boards
    assert r.counts == {("checksum", "ECAL"): 7, ("checksum", "unknown"): 1,
                        ("shape", "ECAL"): 1}
    assert len(seen) == 9
    with pytest.raises(ValueError, match="not one of"):
        r.refuse("anything")


def test_refusal_log_remembers_a_bounded_number_of_peers(
        caplog: pytest.LogCaptureFixture) -> None:
    r = Refusals("recorder", clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="na64.ingress"):
        for i in range(3000):
            r.refuse("header", peer=f"10.0.{i // 256}.{i % 256}")
    assert len(r._last) <= 1024 and len(caplog.records) == 3000
    assert r.counts == {("header", "unknown"): 3000}


# --- the drain policy --------------------------------------------------------------------


async def _fill(n: int, tag: str) -> Inlet:
    outlet, inlet = memory_pipe(tag, Refusals("test"), maxsize=n)
    for i in range(n):
        await outlet.send(encode(_msg(i)))
    return inlet


@pytest.mark.asyncio
async def test_drain_ends_at_the_end_of_the_stream() -> None:
    inlet = await _fill(10, "eos")
    seen: list[int] = []

    async def handle(rx: Received) -> bool:
        seen.append(decode(rx.frames).seq)
        return len(seen) == 4

    assert await drain(inlet, handle, quiet_s=5.0, timeout_s=60.0) == 4
    assert seen == [0, 1, 2, 3] and inlet.waiting()


@pytest.mark.asyncio
async def test_drain_ends_once_the_input_is_quiet() -> None:
    inlet = await _fill(10, "quiet")
    assert await drain(inlet, _keep_going, quiet_s=0.01, timeout_s=60.0) == 10
    assert not inlet.waiting()


@pytest.mark.asyncio
async def test_drain_ends_at_its_deadline_with_messages_still_coming() -> None:
    inlet = await _fill(10, "deadline")
    t = [0.0]

    async def handle(rx: Received) -> bool:
        t[0] += 1.0  # each message takes a second
        return False

    clock: Callable[[], float] = lambda: t[0]  # noqa: E731
    assert await drain(inlet, handle, quiet_s=5.0, timeout_s=3.0, clock=clock) == 3
    assert inlet.waiting()


async def _keep_going(rx: Received) -> bool:
    return False


# --- the default limit ---------------------------------------------------------------------


def test_the_default_limit_holds_the_largest_built_slice() -> None:
    from daq.geometry import load_geometry
    from daq.stack import StackConfig

    g = load_geometry()
    channels = sum(len(b.channels) for b in g.boards)
    largest = 4096 * (g.detector.samples * channels * 2 + 8 + len(g.boards))
    assert slice_bytes(4096, g.detector.samples, channels, len(g.boards)) == largest
    limit = StackConfig().max_message_bytes(g)
    assert limit == limit_for(largest) and 2 * largest <= limit < 2 * largest + (1 << 20)
    bigger = StackConfig.parse({"simulator": {"sim": {"slice_events": 8192}}})
    assert bigger.max_message_bytes(g) == limit_for(2 * largest)
    fixed = StackConfig.parse({"ingress": {"max_message_bytes": 1 << 20}})
    assert fixed.max_message_bytes(g) == 1 << 20
