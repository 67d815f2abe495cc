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
    rec.handle(Message(Kind.SPILL_START, run=5, spill=0), 0.0)
    rec.handle(_accepted(0, 0, 3), 0.1)
    # worker A forwards spill_end and run_stop while worker B still has slices 1 and 2
    rec.handle(Message(Kind.SPILL_END, run=5, spill=0, meta={"slices": 3}), 0.2)
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
    rec.handle(Message(Kind.SPILL_END, run=5, spill=0, meta={"slices": 2}), 0.2)
    rec.handle(Message(Kind.RUN_STOP, run=5, spill=0), 0.2)
    rec.poll(3.0)
    assert rec.writer is not None
    rec.poll(5.3)
    assert rec.writer is None
    assert rec.incomplete_spills == 1  # counted, not silent
    kinds = [m.kind for m in RunFileReader(rec.files[0])]
    assert kinds[-2:] == [Kind.SPILL_END, Kind.RUN_STOP]
