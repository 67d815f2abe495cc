"""Fuzz targets shared by the hypothesis tests (tests/reliability) and the atheris harnesses
(scripts/fuzz_*.py): each takes untrusted bytes and checks the decoder's contract.

The contract of every decoder that reads a socket or a file: bad input raises the one
typed error of that decoder (WireError, RunFileError, ProtocolError) and nothing else;
good input that survived a mutation decodes to a message that re-encodes and decodes to
the same header; a damaged run file yields exactly the records before the damage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daq.control import protocol as P
from daq.errors import RunFileError, WireError
from daq.runfile import RunFileReader, RunFileWriter
from daq.wire import Kind, Message, decode, encode, unpack_frames


def sample_messages() -> list[Message]:
    """A small stream: run and spill markers, a feature slice, an accepted block."""
    n = 3
    rng = np.random.default_rng(1)
    sl = Message(kind=Kind.SLICE, run=7, spill=1, seq=2, src="BEAM", board="BEAM", first=0,
                 count=n, arrays={"ts": np.arange(n, dtype=np.int64),
                                  "nhit": np.array([3, 0, 2], np.uint8),
                                  "hit_ch": np.array([0, 1, 2, 0, 3], np.uint8),
                                  "hit_amp": rng.integers(6, 4000, 5).astype(np.int16),
                                  "hit_t": np.zeros(5, np.int16),
                                  "hit_np": np.ones(5, np.uint8)},
                 meta={"mode": "feature", "zs_adc": 6.0})
    return [
        Message(kind=Kind.RUN_START, run=7, seq=0, src="builder", meta={"config": {"a": 1}}),
        Message(kind=Kind.SPILL_START, run=7, spill=1, seq=1, src="builder",
                meta={"t0_ns": 5}),
        sl,
        Message(kind=Kind.SPILL_END, run=7, spill=1, seq=3, src="builder",
                meta={"slices": 1, "events": n, "shed": 0, "gaps": {}, "incomplete": {}}),
        Message(kind=Kind.RUN_STOP, run=7, spill=1, seq=4, src="builder",
                meta={"reason": "end", "events": n, "spills": 1}),
    ]


def split_frames(data: bytes) -> list[bytes]:
    """Cut fuzz bytes into frames: a u8 count, then u16 lengths (the rest is the last)."""
    if not data:
        return []
    n, rest = data[0] % 6, data[1:]
    frames = []
    for _ in range(n):
        if len(rest) < 2:
            break
        ln = int.from_bytes(rest[:2], "little") % 512
        frames.append(rest[2:2 + ln])
        rest = rest[2 + ln:]
    frames.append(rest)
    return frames


def check_decode(frames: Sequence[bytes]) -> Message | None:
    """decode() refuses with WireError only; what it accepts round-trips."""
    try:
        msg = decode(list(frames))
    except WireError as e:
        assert e.reason in {"truncated", "header", "version", "kind", "shape", "dtype",
                            "checksum", "meta"}, e.reason
        return None
    again = decode(encode(msg, with_crc=False))
    assert (again.kind, again.run, again.spill, again.seq, again.count) == \
        (msg.kind, msg.run, msg.spill, msg.seq, msg.count)
    assert list(again.arrays) == list(msg.arrays)
    return msg


def mutate(frames: list[bytes], data: bytes) -> list[bytes]:
    """Damage valid frames as a link could: flip, cut, extend, drop or add a frame."""
    out = [bytes(memoryview(f).cast("B")) for f in frames]
    for i in range(0, len(data) - 3, 4):
        op, which, pos, val = data[i:i + 4]
        k = which % (len(out) + 1)
        if k == len(out):
            out.append(bytes([val]) * (pos % 9))
            continue
        f = bytearray(out[k])
        if op % 4 == 0 and f:
            f[pos % len(f)] ^= val or 1
        elif op % 4 == 1:
            del f[pos % (len(f) + 1):]
        elif op % 4 == 2:
            f += bytes([val]) * (1 + pos % 7)
        else:
            out.pop(k)
            continue
        out[k] = bytes(f)
    return out


def check_unpack(payload: bytes) -> None:
    try:
        frames = unpack_frames(payload)
    except WireError:
        return
    assert sum(len(f) for f in frames) <= len(payload)


def check_control(topic: str, payload: bytes) -> None:
    """protocol.parse refuses with ProtocolError (a known code) only."""
    try:
        req = P.parse(topic, payload)
    except P.ProtocolError as e:
        assert e.code in P.ERROR_CODES
        return
    assert req.kind in ("run", "trigger")
    json.dumps(req.args)  # what is accepted is plain JSON, safe to persist and audit


def write_sample_file(directory: Path) -> tuple[Path, list[Message], list[int]]:
    """A closed run file of sample_messages(); returns it, the messages and record ends."""
    msgs = sample_messages()
    path = directory / "run.na64"
    w = RunFileWriter(path, run=7, config={"a": 1}, geometry_hash="g", calibration_hash="c")
    ends = []
    for m in msgs:
        w.write(m)
        ends.append(w.bytes_written)
    w.close()
    return path, msgs, ends


def check_runfile(data: bytes, ends: Sequence[int], original: Sequence[Message],
                  damaged_at: int | None) -> None:
    """Read damaged run-file bytes: RunFileError (unreadable header) or a prefix of the
    original records, with every record ending before the damage returned."""
    path = Path(f"/tmp/na64-fuzz-{id(data)}.na64")
    path.write_bytes(data)
    try:
        try:
            r = RunFileReader(path)
        except RunFileError:
            assert damaged_at is not None and damaged_at < ends[0] - 0, "header intact"
            return
        got = list(r.messages())
        rep = r.report
    finally:
        path.unlink(missing_ok=True)
    assert len(got) <= len(original)
    for a, b in zip(got, original, strict=False):
        assert (a.kind, a.seq, a.count) == (b.kind, b.seq, b.count)
    if damaged_at is not None:
        intact = sum(1 for e in ends if e <= damaged_at)
        assert len(got) >= min(intact, len(original)), (len(got), intact)
        if len(got) < len(original):
            assert rep.torn or not rep.closed_cleanly
