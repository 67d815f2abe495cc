"""The recorder after a restart in the middle of a run, and markers that overtake run_start."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daq.recorder import Recording
from daq.runfile import RunFileReader, read_all
from daq.wire import Kind, Message


def _acc(spill: int, first: int, n: int = 2) -> Message:
    return Message(kind=Kind.ACCEPTED, run=3, spill=spill, src="trigger-0", board="ALL",
                   first=first, count=n,
                   arrays={"event": np.arange(first, first + n, dtype=np.uint32)},
                   meta={"slice_index": first // 10, "slice_count": n})


def test_a_marker_overtaking_run_start_goes_into_the_run_file(tmp_path: Path) -> None:
    r = Recording(tmp_path)
    r.handle(Message(kind=Kind.CONFIG, run=3, src="trigger-1",
                     meta={"cfg": "x", "trigger_config": {}}), 0.0)
    r.handle(Message(kind=Kind.RUN_START, run=3, src="trigger-0", meta={"config": {"a": 1}}),
             0.5)
    r.handle(Message(kind=Kind.RUN_STOP, run=3, src="trigger-0", meta={"reason": "end"}), 1.0)
    assert r.resumed == 0 and r.ignored == 0
    msgs, rep = read_all(r.files[0])
    assert [m.kind for m in msgs] == [Kind.RUN_START, Kind.CONFIG, Kind.RUN_STOP]
    assert rep.closed_cleanly


def test_restart_mid_run_records_the_rest_in_a_continuation_file(tmp_path: Path) -> None:
    (tmp_path / "run000003.na64.partial").write_bytes(b"left by the killed recorder")
    r = Recording(tmp_path, resume_after_s=2.0)
    end = Message(kind=Kind.SPILL_END, run=3, spill=2, src="trigger-1",
                  meta={"slices": 2, "events": 20})
    for m in (_acc(2, 10), end):
        assert r.handle(m, 0.0) == 0  # held: run_start may still be coming
    r.poll(1.0)
    assert r.writer is None
    r.poll(2.5)  # no run_start came: this recorder joined a run under way
    assert r.resumed == 1 and r.writer is not None
    assert r.writer.path.name == "run000003.na64.1"
    r.handle(Message(kind=Kind.RUN_STOP, run=3, spill=2, src="trigger-0",
                     meta={"reason": "end"}), 3.0)
    r.poll(20.0)  # spill 2 lost one output in the crash: closed at its timeout, counted
    assert r.incomplete_spills == 1
    msgs, rep = read_all(r.files[0])
    assert rep.closed_cleanly and rep.spills[2].complete
    assert sum(m.count for m in msgs if m.kind is Kind.ACCEPTED) == 2
    assert "resumed" in RunFileReader(r.files[0]).header["config"]


def test_run_stop_while_held_closes_the_continuation(tmp_path: Path) -> None:
    r = Recording(tmp_path)
    r.handle(_acc(5, 0), 0.0)
    r.handle(Message(kind=Kind.RUN_STOP, run=3, spill=5, src="trigger-0",
                     meta={"reason": "end"}), 0.1)
    assert r.resumed == 1 and r.writer is not None  # open now; run_stop waits for spill 5
    r.poll(20.0)  # spill 5's end died with the crash: closed at the timeout, counted
    assert r.writer is None and len(r.files) == 1 and r.incomplete_spills == 1
    assert [m.kind for m in read_all(r.files[0])[0]] == [Kind.ACCEPTED, Kind.RUN_STOP]
