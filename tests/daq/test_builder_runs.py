"""The builder under run control: run after run in one builder, refusals, joining a run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daq_fragments import Board

import daq
from daq.builder import BuilderConfig, EventBuilder
from daq.geometry import load_calibration, load_geometry
from daq.markers import RunStop
from daq.wire import Kind, Message
from simulators.config import SimConfig
from simulators.frontend import FrontEnds
from simulators.generator import Simulator

GEOM = load_geometry()
NAMES = GEOM.board_names


def _builder() -> EventBuilder:
    return EventBuilder(GEOM, BuilderConfig.parse({"timeout_s": 1.0}), calibration="c",
                        default_trigger_config=lambda: {"thresholds": {"ecal_max": 90.0}})


def _run(run: int, spills: int = 2, events: int = 64) -> list[Message]:
    """Every board's stream of a run as a standing front end sends it: run_start, spills,
    run_stop (no eos), interleaved board by board."""
    boards = [Board(GEOM, n, run=run, seed=i) for i, n in enumerate(NAMES)]
    out = [b._msg(Kind.RUN_START, 0) for b in boards]
    for s in range(spills):
        per = [b.spill(s, events, 32) for b in boards]
        out += [m for group in zip(*per, strict=True) for m in group]
    out += [b._msg(Kind.RUN_STOP, spills - 1) for b in boards]
    return out


def _feed(core: EventBuilder, msgs: list[Message], now: float = 0.0) -> list[Message]:
    return [o for m in msgs for o in core.feed(m, now)]


def test_two_runs_in_one_builder_each_closed_by_its_boards_run_stops() -> None:
    core = _builder()
    outs = []
    for run in (7, 8):
        core.begin_run(run, snapshot={"run": run})
        out = _feed(core, _run(run))
        outs.append(out)
        stops = [m for m in out if m.kind is Kind.RUN_STOP]
        # one run_stop, after the last spill's end, once every board had ended the run
        assert len(stops) == 1 and out[-1] is stops[0]
        assert stops[0].run == run and stops[0].meta["spills"] == 2
        assert stops[0].meta["events"] == 2 * 64
        assert stops[0].meta["boards_stopped"] == sorted(NAMES)
        starts = [m for m in out if m.kind is Kind.RUN_START]
        assert [s.meta["config"] for s in starts] == [{"run": run}]  # the run's snapshot
        assert sum(m.count for m in out if m.kind is Kind.SLICE) == 2 * 64
    assert not core.stopped  # a run's end is not the end of the stream
    assert core.finish(1.0)[-1].kind is Kind.END_OF_STREAM
    assert [m.kind for m in core.finish(2.0)] == [Kind.END_OF_STREAM]  # no second run_stop


def test_records_of_another_run_or_between_runs_are_refused_and_counted() -> None:
    core = _builder()
    core.begin_run(3)
    late = _run(2, spills=1)  # a previous run's records, e.g. a slow front end
    assert not [m for m in _feed(core, late) if m.kind is Kind.SLICE]
    assert core.stats["live"].refused["other_run"] == len(late)
    _feed(core, _run(3, spills=1))  # run 3 closes: its boards ended it
    stray = _run(3, spills=1)
    for m in stray:  # a stream restarted with the same run number after the run's close
        m.seq += 1000
    _feed(core, stray)
    assert core.stats["live"].refused["no_run"] == len(stray)
    assert core.stats["live"].refused["other_run"] == len(late)


def test_run_control_stop_closes_the_run_without_the_missing_boards_run_stop() -> None:
    core = _builder()
    core.begin_run(5)
    msgs = [m for m in _run(5, spills=1) if not (m.kind is Kind.RUN_STOP and m.src == "HCAL")]
    out = _feed(core, msgs)
    assert not [m for m in out if m.kind is Kind.RUN_STOP]  # HCAL has not ended it
    assert core.end_run(10.0) == []  # waits timeout_s for the straggler
    out = core.poll(11.0)
    [stop] = [m for m in out if m.kind is Kind.RUN_STOP]
    assert stop.meta["reason"] == "stopped by run control"
    assert "HCAL" not in stop.meta["boards_stopped"]


def test_a_builder_restarted_during_a_run_closes_it_at_the_boards_run_stops() -> None:
    msgs = _run(4, spills=2)
    cut = next(i for i, m in enumerate(msgs) if m.kind is Kind.SPILL_START and m.spill == 1)
    core = _builder()  # the new incarnation: the run_start and spill 0 went by before it
    core.begin_run(4, snapshot={"run": 4})
    out = _feed(core, msgs[cut:])
    stops = [m for m in out if m.kind is Kind.RUN_STOP]
    assert len(stops) == 1 and stops[0].run == 4
    assert {m.spill for m in out if m.kind is Kind.SLICE} == {1}


def _simulated_run(run: int, calibration: Path | None = None) -> list[Message]:
    """The simulated front ends' streams of a run of one spill (run_start with the hashes
    of the geometry and calibration they were configured with), as standing front ends
    send them (run_stop, no eos)."""
    cal = load_calibration(GEOM, calibration)
    sim = Simulator(SimConfig.parse({"generated_s": 0.0005, "seed": 2, "run": run}), GEOM, cal)
    return [em.msg for em in FrontEnds(sim, spills=1).run(end="run_stop")]


def test_a_board_configured_with_another_calibration_or_geometry_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ECAL's front end loaded another calibration (one gain changed: another hash) and
    HCAL's claims another geometry: their records of the run are refused and counted,
    a warning names each board and both hashes, and the others are built with them flagged
    missing. The next run, configured alike, is built whole."""
    other = tmp_path / "calibration.toml"
    shipped = (Path(daq.__file__).parent / "calibration.toml").read_text()
    other.write_text(shipped.replace("[boards.HCAL]\ngain = 30.0", "[boards.HCAL]\ngain = 31.0"))
    own, theirs = load_calibration(GEOM).hash, load_calibration(GEOM, other).hash
    assert own != theirs
    core = EventBuilder(GEOM, BuilderConfig.parse({"timeout_s": 1.0}), calibration=own)
    core.begin_run(4)
    msgs = _simulated_run(4)
    ecal_start = next(m for m in _simulated_run(4, other)
                      if m.kind is Kind.RUN_START and m.board == "ECAL")
    msgs = [ecal_start if m.kind is Kind.RUN_START and m.board == "ECAL" else m for m in msgs]
    hcal_start = next(m for m in msgs if m.kind is Kind.RUN_START and m.board == "HCAL")
    hcal_start.meta = {**hcal_start.meta, "geometry": "0123456789abcdef"}
    with caplog.at_level(logging.WARNING, logger="na64.builder"):
        out = _feed(core, msgs) + core.end_run(5.0) + core.poll(6.0)
    refused = sum(m.board in ("ECAL", "HCAL") for m in msgs)
    assert core.stats["live"].refused == {"hash_mismatch": refused}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert any("board ECAL run 4" in s and theirs in s and own in s for s in lines), lines
    assert any("board HCAL run 4" in s and "0123456789abcdef" in s and GEOM.hash in s
               for s in lines), lines
    slices = [m for m in out if m.kind is Kind.SLICE]
    both = (1 << NAMES.index("ECAL")) | (1 << NAMES.index("HCAL"))
    assert slices and all((s.arrays["missing"] == both).all() for s in slices)
    assert not any(k.startswith(("ECAL.", "HCAL.")) for s in slices for k in s.arrays)
    [start] = [m for m in out if m.kind is Kind.RUN_START]
    assert (start.meta["geometry"], start.meta["calibration"]) == (GEOM.hash, own)
    assert [m.kind for m in out][-1] is Kind.RUN_STOP

    core.begin_run(5)  # the front ends reconfigured: everything is built
    out = _feed(core, _simulated_run(5))
    assert core.stats["live"].refused == {"hash_mismatch": refused}
    assert all(not s.arrays["missing"].any() for s in out if s.kind is Kind.SLICE)
    assert [m.kind for m in out][-1] is Kind.RUN_STOP


def test_a_replay_of_data_taken_with_another_calibration_is_built() -> None:
    """A replay reprocesses recorded data with the installed files on purpose, and a board
    that claims no hash is taken on trust: neither is refused. The replay's run_start (the
    run file's header) names the calibration its events are decided with, the builder's,
    not the one the recording's boards claimed."""
    core = EventBuilder(GEOM, BuilderConfig.parse({"timeout_s": 1.0}), calibration="new")
    core.begin_run(6, replay=True)
    replayed = _simulated_run(6)
    for m in replayed:
        m.replay = True
    out = _feed(core, replayed)
    core.begin_run(7)
    out += _feed(core, _run(7, spills=1))  # the test boards' run_start carries no hash
    assert core.stats["replay"].refused == {} and core.stats["live"].refused == {}
    assert sum(m.kind is Kind.RUN_STOP for m in out) == 2
    assert all(not s.arrays["missing"].any() for s in out if s.kind is Kind.SLICE)
    claimed = {m.meta.get("calibration") for m in replayed if m.kind is Kind.RUN_START}
    assert claimed and "new" not in claimed
    starts = [m for m in out if m.kind is Kind.RUN_START]
    assert [m.meta["calibration"] for m in starts] == ["new", "new"]
    assert {s.meta["calib"] for s in out if s.kind is Kind.SLICE} == {"new"}


@pytest.mark.parametrize("case", ["every board refused", "no board sent"])
def test_a_run_no_board_record_opened_is_closed_empty_at_run_controls_stop(case: str
                                                                           ) -> None:
    """A replay whose every board claims another geometry (refused, hash_mismatch), or a
    live run in which no board sent anything: at run control's stop the run is announced
    and closed downstream at once, with no event and the reason, so that the recorder and
    the monitors close it as run control waits for them to. Before, nothing went
    downstream and run control's stop failed at its timeout."""
    core = EventBuilder(GEOM, BuilderConfig.parse({"timeout_s": 1.0}),
                        calibration=load_calibration(GEOM).hash)
    replay = case == "every board refused"
    core.begin_run(8, replay=replay)
    if replay:
        msgs = _simulated_run(8)
        for m in msgs:
            m.replay = True
            if m.kind is Kind.RUN_START:
                m.meta = {**m.meta, "geometry": "0123456789abcdef"}
        assert _feed(core, msgs) == []
        assert core.stats["replay"].refused == {"hash_mismatch": len(msgs)}
    out = core.end_run(2.0)  # at once, not after timeout_s
    assert [(m.kind, m.run, m.replay) for m in out] == [(Kind.RUN_START, 8, replay),
                                                        (Kind.RUN_STOP, 8, replay)]
    assert out[0].meta["geometry"] == GEOM.hash
    stop = RunStop.of(out[1])
    assert stop.events == 0, stop
    assert ("boards BEAM, ECAL, HCAL, SRD, VETO refused (hash_mismatch)" if replay
            else "no board sent a record") in stop.reason, stop
    assert core.end_run(3.0) == [] and core.poll(4.0) == []  # closed: nothing more
