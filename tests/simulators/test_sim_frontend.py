"""Front-end streams over real ZeroMQ sockets: contract, scalers, every fault seen downstream."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio

from daq.errors import WireError
from daq.hits import FEATURE_HITS, check
from daq.transport import context
from daq.wire import Kind, Message, decode
from simulators.frontend import FrontEnds
from simulators.service import FrontEnd
from tests.conftest import free_tcp_port
from tests.simulators.sim_helpers import simulator

BOARDS = ("BEAM", "SRD", "ECAL", "VETO", "HCAL")


async def _stream(fe: FrontEnds, **kw: Any) -> tuple[list[Message], list[WireError], list[Message]]:
    """Run a FrontEnd into a real PULL on loopback; decode everything that arrives."""
    ctx = context()
    pull = ctx.socket(zmq.PULL)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pull.bind(endpoint)
    good: list[Message] = []
    bad: list[WireError] = []
    truth: list[Message] = []
    try:
        async with FrontEnd(fe, endpoint, truth_sink=truth.append, ctx=ctx, **kw) as svc:
            eos = 0
            while eos < len(fe.boards):
                frames = await asyncio.wait_for(pull.recv_multipart(copy=False), 60)
                try:
                    msg = decode([f.buffer for f in frames])
                except WireError as e:
                    bad.append(e)
                    continue
                good.append(msg)
                eos += msg.kind is Kind.END_OF_STREAM
            await svc.wait()
    finally:
        pull.close(linger=0)
    return good, bad, truth


@pytest.mark.asyncio
async def test_clean_stream_follows_the_contract() -> None:
    sim = simulator(generated_s=0.004, slice_events=1024, seed=2)
    good, bad, truth = await _stream(FrontEnds(sim, spills=2, truth=True))
    assert not bad
    by_src: dict[str, list[Message]] = defaultdict(list)
    for m in good:
        by_src[m.src].append(m)
    assert sorted(by_src) == sorted(BOARDS)
    truth_slices = [m for m in truth if m.kind is Kind.SLICE]
    for board, msgs in by_src.items():
        assert [m.seq for m in msgs] == list(range(len(msgs))), f"{board} seq has gaps"
        assert msgs[0].kind is Kind.RUN_START and msgs[-1].kind is Kind.END_OF_STREAM
        for spill in (0, 1):
            sl = [m for m in msgs if m.kind is Kind.SLICE and m.spill == spill]
            end = next(m for m in msgs if m.kind is Kind.SPILL_END and m.spill == spill)
            assert [m.first for m in sl] == [1024 * k for k in range(len(sl))]
            assert end.meta["events"] == sum(m.count for m in sl)
            assert all(m.meta == {"mode": "feature", "zs_adc": 6.0} for m in sl)
            for m in sl:  # zero-suppressed features, as the contract has them
                check(m.arrays, m.count, sim.geom.n_channels(board), FEATURE_HITS)
            if board == "BEAM":
                sc = end.meta["scalers"]
                v1 = sum(int(m.arrays["v1"].sum()) for m in truth_slices if m.spill == spill)
                assert sc["S1"] == sc["S2"] == sc["S3"] == sc["beam"] == end.meta["events"]
                assert sc["V1"] == v1 > 0
    assert all(m.src == "truth" and m.board == "TRUTH" for m in truth)


@pytest.mark.asyncio
async def test_every_fault_is_seen_downstream() -> None:
    faults = {"corrupt_rate": 0.15, "duplicate_rate": 0.15, "reorder_rate": 0.15,
              "stop_board": "ECAL", "stop_spill": 1, "stop_fraction": 0.5,
              "empty_board": "SRD", "empty_rate": 0.5}
    sim = simulator(faults, generated_s=0.01, slice_events=1024, seed=4)
    good, bad, truth = await _stream(FrontEnds(sim, spills=2, truth=True))
    # corrupt: the CRC no longer matches
    assert bad and all(e.reason == "checksum" for e in bad)
    seen = Counter((m.src, m.seq) for m in good)
    assert any(c > 1 for c in seen.values()), "a duplicated slice repeats its seq"
    out_of_order = False
    for b in BOARDS:
        for spill in (0, 1):
            firsts = [m.first for m in good if m.src == b and m.spill == spill
                      and m.kind is Kind.SLICE]
            out_of_order |= any(x > y for x, y in itertools.pairwise(firsts))
    assert out_of_order, "a reordered slice arrives with a smaller `first` after a larger"
    truth_events = {s: sum(m.count for m in truth if m.kind is Kind.SLICE and m.spill == s)
                    for s in (0, 1)}
    ecal1 = {m.first for m in good if m.src == "ECAL" and m.spill == 1 and m.kind is Kind.SLICE}
    assert max(ecal1) < truth_events[1] // 2 + 1024, "ECAL stopped half way through spill 1"
    assert not any(m.src == "ECAL" and m.kind is Kind.SPILL_END and m.spill == 1 for m in good)
    assert any(m.src == "ECAL" and m.kind is Kind.SPILL_END and m.spill == 0 for m in good)
    srd = [m for m in good if m.src == "SRD" and m.kind is Kind.SLICE]
    empty = [m for m in srd if "nhit" not in m.arrays]
    assert empty and len(empty) < len(srd)
    assert all(list(m.arrays) == ["ts"] and m.count > 0 for m in empty)


@pytest.mark.asyncio
async def test_factor_pacing_waits_for_compressed_beam_time() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(dt: float) -> None:
        waits.append(dt)
        now[0] += dt

    sim = simulator(generated_s=0.004, slice_events=1024, seed=2, spill_period_s=6.0)
    good, _, _ = await _stream(FrontEnds(sim, spills=2), pace="factor", factor=50.0,
                               sleep=sleep, clock=lambda: now[0])
    last = max(m.meta["t0_ns"] for m in good if m.kind is Kind.SPILL_START)
    assert last == 6_000_000_000
    # the clock moved only by the pacing sleeps: to the last emission's time / factor
    assert now[0] == pytest.approx((6.0 + 0.004) / 50.0, abs=1e-3)
    assert all(w > 0 for w in waits)


def test_intensity_ramp_changes_events_per_spill() -> None:
    sim = simulator({"ramp": 1.0}, generated_s=0.002, seed=5)
    n = np.array([sim.plan(s).events for s in range(4)])
    mean = sim.cfg.intensity * sim.cfg.gen_s / sim.cfg.spill_length_s * (1 + np.arange(4))
    assert (np.abs(n - mean) < 5 * np.sqrt(mean)).all()


@pytest.mark.asyncio
async def test_stop_ends_a_realtime_stream_cleanly() -> None:
    ctx = context()
    pull = ctx.socket(zmq.PULL)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pull.bind(endpoint)
    sim = simulator(generated_s=0.004, slice_events=1024, seed=2)
    try:
        async with FrontEnd(FrontEnds(sim, spills=3), endpoint, pace="realtime",
                            ctx=ctx) as svc:
            while True:  # spill 0 (4 ms of beam), up to the BEAM board's spill_end
                m = decode([f.buffer for f in await asyncio.wait_for(
                    pull.recv_multipart(copy=False), 30)])
                if m.kind is Kind.SPILL_END and m.src == "BEAM":
                    break
            await asyncio.sleep(0.2)  # the service is now waiting for spill 1, 16.8 s away
            svc.stop()
            await asyncio.wait_for(svc.wait(), 10)
            ends: dict[str, Message] = {}
            while len(ends) < 5:  # every board stream still ends with eos, seq contiguous
                m = decode([f.buffer for f in await asyncio.wait_for(
                    pull.recv_multipart(copy=False), 10)])
                if m.kind is Kind.END_OF_STREAM:
                    ends[m.src] = m
        assert 0 < svc.sent < 100
        assert svc.state.value == "closed"
    finally:
        pull.close(linger=0)


@pytest.mark.asyncio
async def test_stop_after_spill_in_the_gap_sends_nothing_of_the_next_spill() -> None:
    """Run control's stop arriving between spills: the stream ends at that boundary. The
    next spill's start, paced to its time, must not go out once the wait is over (it did:
    the builder then recorded an empty spill after the last one)."""
    ctx = context()
    pull = ctx.socket(zmq.PULL)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pull.bind(endpoint)
    sim = simulator(generated_s=0.004, slice_events=1024, seed=2)
    got: list[Message] = []
    try:
        # 16.8 s spill period / 20: spill 1 starts 0.84 s after spill 0
        async with FrontEnd(FrontEnds(sim, spills=3), endpoint, pace="factor", factor=20.0,
                            ctx=ctx) as svc:
            while not (got and got[-1].kind is Kind.SPILL_END and got[-1].src == "BEAM"):
                got.append(decode([f.buffer for f in await asyncio.wait_for(
                    pull.recv_multipart(copy=False), 30)]))
            await asyncio.sleep(0.2)  # every board has ended spill 0; spill 1 is 0.6 s away
            svc.stop_after_spill()
            await asyncio.wait_for(svc.wait(), 10)
            while sum(m.kind is Kind.END_OF_STREAM for m in got) < len(BOARDS):
                got.append(decode([f.buffer for f in await asyncio.wait_for(
                    pull.recv_multipart(copy=False), 10)]))
    finally:
        pull.close(linger=0)
    assert {m.spill for m in got if m.kind is Kind.SPILL_START} == {0}
    assert not [m for m in got if m.kind is Kind.SLICE and m.spill != 0]
    for b in BOARDS:  # each stream: contiguous sequence numbers, ended by its eos
        seqs = [m.seq for m in got if m.src == b]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), b
        assert [m for m in got if m.src == b][-1].kind is Kind.END_OF_STREAM, b
