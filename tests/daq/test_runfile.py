"""Run files: round trip, torn and corrupt tails, partial files, rotation, spill seeking."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from daq_fragments import Board

from daq.errors import RunFileError
from daq.geometry import load_geometry
from daq.runfile import RunFileReader, RunFileWriter, partial_path, read_all, rotated_path
from daq.wire import Kind, Message, encode

GEOM = load_geometry()


def _run(spills: int = 3, events: int = 70, mode: str = "waveform") -> list[Message]:
    b = Board(GEOM, "ECAL", mode=mode, seed=7)
    msgs = [Message(kind=Kind.RUN_START, run=1, src="builder", meta={"config": {}})]
    for s in range(spills):
        msgs += b.spill(s, events, 32)
    msgs.append(Message(kind=Kind.RUN_STOP, run=1, spill=spills - 1, src="builder",
                        meta={"reason": "end"}))
    return msgs


def _same(a: Message, b: Message) -> bool:
    fa, fb = encode(a), encode(b)
    return len(fa) == len(fb) and all(bytes(x) == bytes(y) for x, y in zip(fa, fb, strict=True))


def _write(path: Path, msgs: list[Message], close: bool = True, **kw: object) -> RunFileWriter:
    w = RunFileWriter(path, run=1, config={"beam": 100}, geometry_hash=GEOM.hash,
                      calibration_hash="cafe", **kw)  # type: ignore[arg-type]
    for m in msgs:
        w.write(m)
    if close:
        w.close()
    return w


def test_round_trip_is_byte_exact_and_closed_cleanly(tmp_path: Path) -> None:
    msgs = _run()
    path = tmp_path / "run1.na64"
    _write(path, msgs)
    assert path.exists() and not partial_path(path).exists()
    r = RunFileReader(path)
    assert r.header["run"] == 1 and r.header["config"] == {"beam": 100}
    assert r.header["geometry"] == GEOM.hash and r.header["calibration"] == "cafe"
    back = list(r)
    assert len(back) == len(msgs)
    assert all(_same(a, b) for a, b in zip(msgs, back, strict=True))
    rep = r.report
    assert rep.closed_cleanly and not rep.torn and rep.bytes_dropped == 0
    assert rep.torn_spill is None and rep.records == len(msgs)
    assert sorted(rep.spills) == [0, 1, 2] and all(i.complete for i in rep.spills.values())


def test_partial_file_is_readable_and_names_the_open_spill(tmp_path: Path) -> None:
    msgs = _run()
    path = tmp_path / "run1.na64"
    cut = len(msgs) - 3  # inside spill 2: its spill_end and run_stop never written
    w = _write(path, msgs[:cut], close=False)
    w._f.flush()  # type: ignore[union-attr]  # the test reads what a crash would leave
    back, rep = read_all(path)  # the reader finds the .partial by itself
    assert len(back) == cut and all(_same(a, b) for a, b in zip(msgs, back, strict=False))
    assert not rep.closed_cleanly and not rep.torn and rep.torn_spill == 2
    assert rep.spills[1].complete and not rep.spills[2].complete
    w.close()


@pytest.mark.parametrize("chop", [1, 5, 8, 100, 5000])
def test_torn_tail_keeps_every_complete_record(tmp_path: Path, chop: int) -> None:
    msgs = _run()
    path = tmp_path / "run1.na64"
    w = _write(path, msgs[:-2], close=False)
    w._f.flush()  # type: ignore[union-attr]
    tmp = partial_path(path)
    size = tmp.stat().st_size
    last_rec = size - (8 + sum(memoryview(f).nbytes for f in encode(msgs[-3])) + 4
                       + 4 * (1 + len(msgs[-3].arrays) + 1) - 4)
    os.truncate(tmp, size - chop)
    back, rep = read_all(tmp)
    assert len(back) == len(msgs) - 3  # the last record written lost, nothing else
    assert all(_same(a, b) for a, b in zip(msgs, back, strict=False))
    assert rep.torn and rep.dropped_at == last_rec
    assert rep.bytes_dropped == size - chop - last_rec
    assert rep.torn_spill == 2 and "byte" in rep.reason
    w._f.close()  # type: ignore[union-attr]


def test_corrupt_byte_stops_the_reader_there(tmp_path: Path) -> None:
    msgs = _run()
    path = tmp_path / "run1.na64"
    _write(path, msgs)
    rec_off = RunFileReader(path).spill_index[1].offset  # type: ignore[index]
    with open(path, "r+b") as f:
        f.seek(rec_off + 40)
        b = f.read(1)
        f.seek(rec_off + 40)
        f.write(bytes([b[0] ^ 0xFF]))
    back, rep = read_all(path)
    assert rep.torn and "CRC32C" in rep.reason and rep.dropped_at == rec_off
    assert [m.spill for m in back if m.kind is Kind.SPILL_END] == [0]
    assert not rep.closed_cleanly


def test_not_a_run_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "junk.na64"
    p.write_bytes(b"hello world, not a run file at all")
    with pytest.raises(RunFileError, match="bad magic"):
        RunFileReader(p)


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "run1.na64"
    _write(path, _run(1))
    with pytest.raises(RunFileError, match="exists"):
        _write(path, _run(1))


def test_seek_to_a_spill_reads_only_that_spill(tmp_path: Path) -> None:
    msgs = _run(spills=4)
    path = tmp_path / "run1.na64"
    _write(path, msgs)
    r = RunFileReader(path)
    got = list(r.messages(spills=(2, 2)))
    want = [m for m in msgs if m.spill == 2 and m.kind is not Kind.RUN_STOP]
    assert got[0].kind is Kind.RUN_START
    assert all(_same(a, b) for a, b in zip(want, got[1:], strict=True))
    # the reader seeked: it read spill 2 and at most one record beyond, not spills 0-1
    assert r.report.records <= len(want) + 2


def test_rotation_at_spill_boundaries(tmp_path: Path) -> None:
    msgs = _run(spills=4)
    path = tmp_path / "run1.na64"
    w = _write(path, msgs, close=False, max_bytes=300_000)
    files = w.close()
    assert files == [rotated_path(path, i) for i in range(len(files))] and len(files) >= 2
    back = [m for f in files for m in RunFileReader(f)]
    assert all(_same(a, b) for a, b in zip(msgs, back, strict=True))
    for f in files:  # a spill never spans two files
        spills = RunFileReader(f).spill_index
        assert spills is not None and all(i.complete for i in spills.values())
    assert np.array_equal([RunFileReader(f).header["part"] for f in files], range(len(files)))


@pytest.mark.parametrize("resumed", [True, False])
def test_a_restarted_builders_start_continues_its_spill(tmp_path: Path, resumed: bool) -> None:
    # the old builder started spill 1 and died; the restarted one joined it (`resumed`) and
    # ended it. Two starts that are both new leave the spill open: one end is missing.
    m = [Message(kind=Kind.RUN_START, run=1, src="builder", meta={"config": {}}),
         Message(kind=Kind.SPILL_START, run=1, spill=1, src="builder",
                 meta={"t0_ns": 0, "resumed": False}),
         Message(kind=Kind.SPILL_START, run=1, spill=1, src="builder",
                 meta={"t0_ns": 0, "resumed": resumed}),
         Message(kind=Kind.SPILL_END, run=1, spill=1, src="builder",
                 meta={"events": 0, "resumed": resumed}),
         Message(kind=Kind.RUN_STOP, run=1, spill=1, src="builder", meta={"reason": "end"})]
    path = tmp_path / "run1.na64"
    _write(path, m)
    r = RunFileReader(path)
    list(r)
    assert r.report.spills[1].complete is resumed
    assert r.spill_index[1].complete is resumed  # type: ignore[index]
