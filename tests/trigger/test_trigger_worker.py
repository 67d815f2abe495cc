"""The trigger worker over real ZeroMQ sockets: 1 vs 2 workers, config changes, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import urllib.request
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry
from trigger_data import built_stream, detector

from daq.metrics import MetricsServer
from daq.transport import arecv, asend, context
from daq.wire import Kind, Message, encode
from trigger.config import PHYSICS, TriggerConfig
from trigger.worker import TriggerWorker, WorkerConfig

GEOM, CAL = detector()
_ids = itertools.count()

Outputs = dict[str, list[Message]]


async def _run(stream: list[Message], n_workers: int, *, extra: list[list[Any]] | None = None,
               registries: list[CollectorRegistry] | None = None) -> Outputs:
    """Feed `stream` (and raw `extra` frames first) to n workers; collect both outputs."""
    ctx = context()
    tag = next(_ids)
    ep = {k: f"inproc://trig-{tag}-{k}" for k in ("in", "rec", "mon")}
    push, rec, mon = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    for s, k in ((push, "in"), (rec, "rec"), (mon, "mon")):
        s.setsockopt(zmq.LINGER, 0)
        s.bind(ep[k])
    regs = registries or [CollectorRegistry() for _ in range(n_workers)]
    workers = [TriggerWorker(WorkerConfig(input=ep["in"], recorder=ep["rec"], monitors=(ep["mon"],),
                                          index=i), GEOM, CAL, regs[i]) for i in range(n_workers)]
    slices = sum(m.kind is Kind.SLICE for m in stream)
    out: Outputs = {"rec": [], "mon": []}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for w in workers:
                await stack.enter_async_context(w)
            await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in workers)), 60)
            for frames in extra or []:
                await push.send_multipart(frames)
            for m in stream:
                await asend(push, m)

            async def collect(sock: zmq.asyncio.Socket, key: str, kind: Kind) -> None:
                while (sum(m.kind is kind for m in out[key]) < slices
                       or not any(m.kind is Kind.END_OF_STREAM for m in out[key])):
                    out[key].append(await arecv(sock))

            await asyncio.wait_for(asyncio.gather(collect(rec, "rec", Kind.ACCEPTED),
                                                  collect(mon, "mon", Kind.FEATURES)), 60)
    finally:
        for s in (push, rec, mon):
            s.close()
    return out


def _by_slice(msgs: list[Message], kind: Kind) -> dict[tuple[int, int], Message]:
    return {(m.spill, m.first): m for m in msgs if m.kind is kind}


def _assert_seq_contiguous(msgs: list[Message]) -> None:
    per_src: dict[str, list[int]] = {}
    for m in msgs:
        per_src.setdefault(m.src, []).append(m.seq)
    for src, seqs in per_src.items():
        assert src.startswith("trigger-")
        assert seqs == list(range(len(seqs))), src


@pytest.mark.asyncio
async def test_two_workers_decide_like_one_and_config_change_applies_at_next_spill() -> None:
    new = TriggerConfig(ecal_max_gev=40.0, prescale_beam=3, version=2).model_dump(mode="json")
    stream = built_stream("feature", spills=3, change=new, change_at=1)
    regs = [CollectorRegistry(), CollectorRegistry()]
    one = await _run(stream, 1)
    two = await _run(stream, 2, registries=regs)
    f1, f2 = _by_slice(one["mon"], Kind.FEATURES), _by_slice(two["mon"], Kind.FEATURES)
    a1, a2 = _by_slice(one["rec"], Kind.ACCEPTED), _by_slice(two["rec"], Kind.ACCEPTED)
    assert f1.keys() == f2.keys() == a1.keys() == a2.keys()
    assert len(f1) == sum(m.kind is Kind.SLICE for m in stream)
    for key in f1:
        for name in ("cond", "bits", "shadow", "e_ecal", "mult"):
            np.testing.assert_array_equal(f1[key].arrays[name], f2[key].arrays[name])
        np.testing.assert_array_equal(a1[key].arrays["event"], a2[key].arrays["event"])
    # both workers took part, and each output stream is numbered without gaps
    per_worker = [r.get_sample_value("na64_trigger_slices_total") for r in regs]
    assert all(v is not None and v > 0 for v in per_worker)
    assert sum(v or 0 for v in per_worker) == len(f1)
    for out in (one, two):
        _assert_seq_contiguous(out["rec"])
        _assert_seq_contiguous(out["mon"])
    # markers were forwarded to both outputs
    for out_name in ("rec", "mon"):
        kinds = [m.kind for m in two[out_name]]
        assert kinds.count(Kind.SPILL_END) == 3 and kinds.count(Kind.CONFIG) == 2
    # the change: spill 0 with the default, spills 1 and 2 with the new configuration
    new_hash = next(m.meta["cfg"] for m in stream if m.kind is Kind.CONFIG and m.spill == 1)
    for (spill, _), m in f2.items():
        assert (m.meta["cfg"] == new_hash) == (spill >= 1)
        phys = (m.arrays["bits"] & PHYSICS) != 0
        cut = 40.0 if spill >= 1 else 90.0
        assert np.all(m.arrays["e_ecal"][phys] < cut)
    assert any(np.any((m.arrays["e_ecal"] >= 40) & (m.arrays["e_ecal"] < 90)
                      & ((m.arrays["bits"] & PHYSICS) != 0)) for (s, _), m in f2.items() if s == 0)
    # an accepted message holds exactly the events with bits set, full data included
    for key, m in a2.items():
        f = f2[key]
        np.testing.assert_array_equal(m.arrays["event"] - key[1], np.flatnonzero(f.arrays["bits"]))
        assert m.meta["slice_count"] == f.count
        for b in GEOM.board_names:  # each board's hits, restricted to the accepted events
            if f"{b}.nhit" in m.arrays:
                assert m.arrays[f"{b}.nhit"].shape == (m.count,)
                assert len(m.arrays[f"{b}.hit_amp"]) == int(m.arrays[f"{b}.nhit"].sum())
        assert "ECAL.hit_amp" in m.arrays or m.count == 0


@pytest.mark.asyncio
async def test_shadow_reports_without_changing_what_is_kept() -> None:
    shadow = TriggerConfig(ecal_max_gev=60.0).model_dump(mode="json")
    plain = _by_slice((await _run(built_stream(spills=1), 1))["mon"], Kind.FEATURES)
    reg = CollectorRegistry()
    shadowed = _by_slice((await _run(built_stream(spills=1, shadow=shadow), 1,
                                     registries=[reg]))["mon"], Kind.FEATURES)
    assert plain and shadowed.keys() == plain.keys()
    total_shadow = 0
    for key, m in shadowed.items():
        np.testing.assert_array_equal(m.arrays["bits"], plain[key].arrays["bits"])
        assert np.all(plain[key].arrays["shadow"] == 0)
        s = m.arrays["shadow"]
        assert np.all(m.arrays["e_ecal"][(s & PHYSICS) != 0] < 60.0)
        assert m.meta["shadow_cfg"] is not None
        total_shadow += int(np.count_nonzero(s & PHYSICS))
    assert reg.get_sample_value("na64_trigger_shadow_accepted_total",
                                {"type": "physics"}) == total_shadow


@pytest.mark.asyncio
async def test_bad_input_is_refused_and_counted_and_the_worker_goes_on() -> None:
    stream = built_stream(spills=1)
    good = next(m for m in stream if m.kind is Kind.SLICE)

    def variant(**meta: Any) -> list[Any]:
        return encode(Message(Kind.SLICE, run=good.run, spill=good.spill, board="ALL",
                              first=good.first, count=good.count, arrays=good.arrays,
                              meta=dict(good.meta, **meta)))

    bad_cfg = dict(good.meta["trigger_config"], ecal_max_gev=-5.0)
    from daq.config import content_hash
    extra = [
        [b"not msgpack at all"],
        variant(calib="0000000000000000"),
        variant(cfg="ffffffffffffffff"),
        variant(trigger_config=bad_cfg, cfg=content_hash(bad_cfg)),
        variant(mode="analog"),
    ]
    reg = CollectorRegistry()
    server = MetricsServer(reg)
    try:
        out = await _run(stream, 1, extra=extra, registries=[reg])
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.close()
    for reason, n in (("header", 1), ("calibration", 1), ("config", 2), ("mode", 1)):
        assert reg.get_sample_value("na64_trigger_refused_total", {"reason": reason}) == n
    slices = [m for m in stream if m.kind is Kind.SLICE]
    assert len(_by_slice(out["mon"], Kind.FEATURES)) == len(slices)
    assert f"na64_trigger_processed_events_total {float(sum(m.count for m in slices))}" in text
    assert 'na64_trigger_refused_total{reason="config"} 2.0' in text
    assert "na64_trigger_config_version 1.0" in text
