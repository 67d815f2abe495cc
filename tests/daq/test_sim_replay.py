"""With the simulator on real sockets: builder counts, faults, raw recording and replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from daq.builder import BuilderConfig, EventBuilder
from daq.builder_service import BuilderService
from daq.cli import main
from daq.geometry import load_calibration, load_geometry
from daq.replay import parse_spills, replay, schedule
from daq.runfile import RunFileReader, RunFileWriter
from daq.transport import arecv, context
from daq.wire import Kind, Message
from simulators.config import FaultConfig, SimConfig
from simulators.frontend import TRUTH, Emission, FrontEnds
from simulators.generator import Simulator
from simulators.service import FrontEnd

GEOM = load_geometry()
CALIB = load_calibration(GEOM)
SIM = {"intensity": 1e5, "generated_s": 0.01, "slice_events": 64, "seed": 3}


def _frontends(spills: int = 2, **faults: object) -> FrontEnds:
    sim = Simulator(SimConfig.parse(SIM), GEOM, CALIB, FaultConfig.parse(faults))
    return FrontEnds(sim, spills=spills)


def _service(tmp_path: Path) -> tuple[BuilderService, CollectorRegistry]:
    cfg = BuilderConfig.parse({"input": f"ipc://{tmp_path}/bin", "output": f"ipc://{tmp_path}/bout",
                               "timeout_s": 0.3})
    reg = CollectorRegistry()
    b = EventBuilder(GEOM, cfg, calibration=CALIB.hash)
    return BuilderService(b, reg, poll_interval_s=0.02, drain_timeout_s=1.0), reg


async def _collect(endpoint: str, timeout: float = 30.0) -> list[Message]:
    sock = context().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    got: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            while not got or got[-1].kind is not Kind.END_OF_STREAM:
                got.append(await arecv(sock))
    finally:
        sock.close()
    return got


async def _run_sim(tmp_path: Path, fe: FrontEnds) -> tuple[list[Message], list[Emission],
                                                          BuilderService]:
    svc, _ = _service(tmp_path)
    sent: list[Emission] = []
    async with svc:
        collector = asyncio.create_task(_collect(svc.output_endpoint))
        async with FrontEnd(fe, svc.input_endpoint, on_emit=sent.append) as front:
            await front.wait()
        got = await collector
        await svc.wait()
    return got, sent, svc


def _board_events(sent: list[Emission], board: str) -> dict[int, int]:
    ends = [e.msg for e in sent if e.src == board and e.msg.kind is Kind.SPILL_END]
    return {m.spill: m.meta["events"] for m in ends}


@pytest.mark.asyncio
async def test_simulated_run_builds_every_event(tmp_path: Path) -> None:
    got, sent, svc = await _run_sim(tmp_path, _frontends())
    want = _board_events(sent, "BEAM")
    slices = [m for m in got if m.kind is Kind.SLICE]
    for sp, n in want.items():
        assert sum(s.count for s in slices if s.spill == sp) == n
    assert not any(s.arrays["missing"].any() for s in slices)
    ends = {m.spill: m.meta for m in got if m.kind is Kind.SPILL_END}
    assert {sp: e["events"] for sp, e in ends.items()} == want
    assert all(e["incomplete"] == {} and e["gaps"] == {} for e in ends.values())
    assert got[-2].kind is Kind.RUN_STOP and svc.builder.stats["live"].events == sum(want.values())


@pytest.mark.asyncio
async def test_simulated_board_stop_duplicates_and_reordering(tmp_path: Path) -> None:
    fe = _frontends(stop_board="VETO", stop_spill=1, stop_fraction=0.5, duplicate_rate=0.2,
                    reorder_rate=0.2, seed=11)
    got, sent, svc = await _run_sim(tmp_path, fe)
    beam, veto = _board_events(sent, "BEAM"), {}
    veto_sent = sum(e.msg.count for e in sent if e.src == "VETO" and e.msg.kind is Kind.SLICE
                    and e.msg.spill == 1)
    veto[1] = veto_sent
    ends = {m.spill: m.meta for m in got if m.kind is Kind.SPILL_END}
    assert ends[1]["incomplete"] == {"VETO": beam[1] - veto[1]} and beam[1] > veto[1]
    assert ends[0]["incomplete"] == {}
    slices = [m for m in got if m.kind is Kind.SLICE]
    assert sum(s.count for s in slices) == sum(beam.values())
    keys = [(e.src, e.msg.seq) for e in sent if e.src != TRUTH]
    dups = len(keys) - len(set(keys))
    st = svc.builder.stats["live"]
    assert dups > 0 and sum(st.duplicates.values()) == dups
    assert sum(st.out_of_order.values()) > 0 and sum(st.seq_gaps.values()) == 0


def _record_raw(path: Path, fe: FrontEnds) -> list[Message]:
    msgs = [e.msg for e in fe.run() if e.src != TRUTH]
    with RunFileWriter(path, run=1, config=dict(SIM), geometry_hash=GEOM.hash,
                       calibration_hash=CALIB.hash) as w:
        for m in msgs:
            w.write(m)
    return msgs


@pytest.mark.asyncio
async def test_replay_through_the_builder_yields_the_recorded_events(tmp_path: Path) -> None:
    raw = tmp_path / "raw1.na64"
    recorded = _record_raw(raw, _frontends(spills=3))
    svc, reg = _service(tmp_path)
    async with svc:
        collector = asyncio.create_task(_collect(svc.output_endpoint))
        res = await replay(raw, svc.input_endpoint, send_eos=True)
        got = await collector
        await svc.wait()
    assert all(m.replay for m in got)
    rec = {(m.spill, m.first): m for m in recorded if m.kind is Kind.SLICE and m.board == "ECAL"}
    built = [m for m in got if m.kind is Kind.SLICE]
    assert [(m.spill, m.first) for m in built] == sorted(rec)  # every event, in order
    for m in built:
        r = rec[(m.spill, m.first)]
        assert np.array_equal(m.arrays["ts"], r.arrays["ts"])
        for k in ("nhit", "hit_ch", "hit_amp", "hit_t", "hit_np"):
            assert np.array_equal(m.arrays[f"ECAL.{k}"], r.arrays[k])
        assert not m.arrays["missing"].any()
    # events, each counted once (not once per board fragment)
    slices = [m for m in recorded if m.kind is Kind.SLICE]
    assert res.events == sum(m.count for m in slices if m.board == slices[0].board)
    assert res.events * len({m.board for m in slices}) == sum(m.count for m in slices)
    st = svc.builder.stats
    assert st["live"].events == 0 and st["replay"].events == sum(m.count for m in built)
    value = reg.get_sample_value
    assert value("na64_builder_events_total", {"source": "replay"}) == st["replay"].events
    assert value("na64_builder_events_total", {"source": "live"}) == 0


def test_replay_schedule_selects_spills_and_paces(tmp_path: Path) -> None:
    raw = tmp_path / "raw1.na64"
    _record_raw(raw, _frontends(spills=3))
    plan = list(schedule(RunFileReader(raw), speed=1000.0, spills=parse_spills("1:2")))
    spills = {p.msg.spill for p in plan if p.msg.kind is Kind.SLICE}
    assert spills == {1, 2} and all(p.msg.replay for p in plan)
    assert all(p.msg.kind is not Kind.END_OF_STREAM for p in plan)
    per_src = {}
    for p in plan:
        per_src.setdefault(p.msg.src, []).append(p.msg.seq)
    assert all(v[0] == 0 for v in per_src.values())  # each replayed stream starts at 0
    times = [p.at_s for p in plan]
    assert times == sorted(times)
    # spill 2 starts 16.8 s after spill 1 in the recording: 16.8 ms at speed 1000
    t2 = next(p.at_s for p in plan if p.msg.spill == 2)
    assert t2 == pytest.approx(16.8e-3, rel=1e-6)


def test_inspect_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw1.na64"
    recorded = _record_raw(raw, _frontends(spills=2, stop_board="HCAL", stop_spill=1,
                                           stop_fraction=0.5))
    assert main(["inspect", str(raw), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["closed_cleanly"] and not out["recovered"] and out["run"] == 1
    s0, s1 = out["spills"]
    beam = {m.spill: m.meta["events"] for m in recorded
            if m.kind is Kind.SPILL_END and m.board == "BEAM"}
    hcal1 = sum(m.count for m in recorded if m.board == "HCAL" and m.kind is Kind.SLICE
                and m.spill == 1)
    assert (s0["events"], s1["events"]) == (beam[0], beam[1])
    assert s0["incomplete"] == 0 and s1["incomplete"] == beam[1] - hcal1
    assert s0["boards"] == sorted(GEOM.board_names)
    assert main(["inspect", str(raw)]) == 0
    assert "closed cleanly" in capsys.readouterr().out
