"""The recorder holds run_stop until the accepted events of every announced slice are in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daq.recorder import Recording
from daq.runfile import RunFileReader
from daq.wire import Kind, Message


def _accepted(spill: int, index: int, n: int) -> Message:
    return Message(Kind.ACCEPTED, run=5, spill=spill, board="ALL", first=index * 100, count=n,
                   arrays={"event": np.arange(n, dtype=np.uint32) + index * 100},
                   meta={"slice_index": index, "slice_count": 100})


def test_run_stop_overtaking_the_last_slices_loses_nothing(tmp_path: Path) -> None:
    rec = Recording(tmp_path, spill_timeout_s=5.0)
    rec.handle(Message(Kind.RUN_START, run=5, meta={"config": {}}), 0.0)
    rec.handle(Message(Kind.SPILL_START, run=5, spill=0, meta={"t0_ns": 0}), 0.0)
    rec.handle(_accepted(0, 0, 3), 0.1)
    # worker A forwards spill_end and run_stop while worker B still has slices 1 and 2
    rec.handle(Message(Kind.SPILL_END, run=5, spill=0, meta={"events": 300, "slices": 3}), 0.2)
    rec.handle(Message(Kind.RUN_STOP, run=5, spill=0, meta={"reason": "end"}), 0.2)
    assert rec.writer is not None  # still open: two slices are missing
    rec.handle(_accepted(0, 1, 4), 0.3)
    assert rec.writer is not None
    rec.handle(_accepted(0, 2, 5), 0.4)
    assert rec.writer is None and len(rec.files) == 1
    kinds = [m.kind for m in RunFileReader(rec.files[0])]
    assert kinds == [Kind.RUN_START, Kind.SPILL_START, Kind.ACCEPTED, Kind.ACCEPTED,
                     Kind.ACCEPTED, Kind.SPILL_END, Kind.RUN_STOP]
    assert rec.counts.events == 12
    assert rec.incomplete_spills == 0


def test_a_slice_that_never_comes_closes_the_run_at_the_timeout(tmp_path: Path) -> None:
    rec = Recording(tmp_path, spill_timeout_s=5.0)
    rec.handle(Message(Kind.RUN_START, run=5, meta={"config": {}}), 0.0)
    rec.handle(_accepted(0, 0, 3), 0.1)
    rec.handle(Message(Kind.SPILL_END, run=5, spill=0, meta={"events": 300, "slices": 2}), 0.2)
    rec.handle(Message(Kind.RUN_STOP, run=5, spill=0, meta={"reason": "end"}), 0.2)
    rec.poll(3.0)
    assert rec.writer is not None
    rec.poll(5.3)
    assert rec.writer is None
    assert rec.incomplete_spills == 1  # counted, not silent
    kinds = [m.kind for m in RunFileReader(rec.files[0])]
    assert kinds[-2:] == [Kind.SPILL_END, Kind.RUN_STOP]


def _spill_start(spill: int, previous: dict | None) -> Message:
    return Message(Kind.SPILL_START, run=5, spill=spill,
                   meta={"t0_ns": 0, "previous_end": previous})


def _end_meta(spill: int, slices: int) -> dict:
    return {"run": 5, "spill": spill, "slices": slices, "events": 300, "incomplete": {},
            "shed": 0, "gaps": {}, "scalers": {"beam": 300}, "resumed": False}


def test_a_spill_end_that_died_with_a_worker_comes_from_the_next_spill_start(
        tmp_path: Path) -> None:
    rec = Recording(tmp_path, spill_timeout_s=5.0, copy_grace_s=1.0)
    rec.handle(Message(Kind.RUN_START, run=5, meta={"config": {}}), 0.0)
    rec.handle(_spill_start(0, None), 0.0)
    rec.handle(_accepted(0, 0, 3), 0.1)
    rec.handle(_accepted(0, 1, 4), 0.1)
    # spill 0's spill_end died with its worker; the builder repeats it in spill 1's start
    rec.handle(_spill_start(1, _end_meta(0, 2)), 0.5)
    assert rec.poll(1.4) == 0  # the original may still come: wait copy_grace_s
    assert rec.poll(1.5) > 0 and rec.end_copies == 1
    rec.handle(_accepted(1, 0, 2), 1.6)
    # the original turns up after all (a slow worker, not a dead one): not written twice
    rec.handle(Message(Kind.SPILL_END, run=5, spill=0, meta={"events": 300, "slices": 2}), 1.7)
    assert rec.ignored == 1
    rec.handle(Message(Kind.SPILL_END, run=5, spill=1, meta={"events": 300, "slices": 1}), 1.8)
    rec.handle(Message(Kind.RUN_STOP, run=5, spill=1, meta={"reason": "end",
                                                         "previous_end": _end_meta(1, 1)}),
               1.9)
    assert rec.writer is None and rec.incomplete_spills == 0
    reader = RunFileReader(rec.files[0])
    ends = [m for m in reader if m.kind is Kind.SPILL_END]
    assert [(m.spill, m.meta.get("copy_of")) for m in ends] == [(0, "previous_end"),
                                                               (1, None)]
    assert ends[0].meta["scalers"] == {"beam": 300}  # the accounting survives
    assert all(sp.complete for sp in reader.report.spills.values())


def test_the_original_spill_end_wins_over_its_copy_within_the_grace(tmp_path: Path) -> None:
    rec = Recording(tmp_path, spill_timeout_s=5.0, copy_grace_s=1.0)
    rec.handle(Message(Kind.RUN_START, run=5, meta={"config": {}}), 0.0)
    rec.handle(_spill_start(0, None), 0.0)
    rec.handle(_accepted(0, 0, 3), 0.1)
    rec.handle(_spill_start(1, _end_meta(0, 1)), 0.2)  # overtook the original
    rec.handle(Message(Kind.SPILL_END, run=5, spill=0,
                       meta={"events": 300, "slices": 1, "skipped": False}), 0.3)
    rec.poll(2.0)
    rec.close()
    ends = [m for m in RunFileReader(rec.files[0]) if m.kind is Kind.SPILL_END]
    assert [(m.spill, m.meta.get("copy_of"), m.meta.get("skipped")) for m in ends] == \
        [(0, None, False)]
    assert rec.end_copies == 0


def test_no_end_is_made_for_a_spill_whose_start_never_came(tmp_path: Path) -> None:
    rec = Recording(tmp_path, spill_timeout_s=5.0, copy_grace_s=1.0)
    rec.handle(Message(Kind.RUN_START, run=5, meta={"config": {}}), 0.0)
    # spill 0's start and end both died: the file must not claim the spill complete
    rec.handle(_spill_start(1, _end_meta(0, 1)), 0.2)
    rec.poll(3.0)
    rec.close()
    reader = RunFileReader(rec.files[0])
    assert [m.kind for m in reader if m.spill == 0 and m.kind is not Kind.RUN_START] == []
    assert rec.end_copies == 0
