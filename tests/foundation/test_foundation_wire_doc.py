"""docs/wire-format.md's worked example is what the codec reads and writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from daq.wire import Kind, Message, decode, encode

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _hex_blocks() -> list[bytes]:
    text = DOC.read_text().split("## Worked example", 1)[1]
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        hexes = []
        for line in block.splitlines():
            m = re.match(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})", line.strip())
            if m:
                hexes.append(m.group(1))
        if hexes:
            out.append(bytes.fromhex(" ".join(hexes)))
    return out


def test_worked_example_decodes_and_matches_the_codec() -> None:
    frames = _hex_blocks()
    assert len(frames) == 3
    msg = decode(frames)
    assert (msg.kind, msg.run, msg.spill, msg.seq, msg.first, msg.count) == (
        Kind.SLICE, 12, 3, 41, 4096, 2)
    assert msg.arrays["ts"].tolist() == [1000, 1850]
    assert msg.arrays["npulse"].tolist() == [[1, 1, 1, 0], [2, 2, 2, 0]]
    again = encode(Message(Kind.SLICE, run=12, spill=3, seq=41, src="BEAM", board="BEAM",
                           first=4096, count=2, arrays={
                               "ts": np.array([1000, 1850], np.int64),
                               "npulse": np.array([[1, 1, 1, 0], [2, 2, 2, 0]], np.uint8)},
                           meta={"mode": "feature"}))
    assert [memoryview(f).tobytes() for f in again] == frames
