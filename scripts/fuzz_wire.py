"""Coverage-guided fuzzing (atheris) of the wire decoder and the run-file record framing.

    pip install atheris            # or: pip install -e '.[fuzz]'
    python scripts/fuzz_wire.py -atheris_runs=200000 -max_len=4096

Each input is cut into frames (tests/reliability/fuzz_targets.py:split_frames) and decoded;
half of the inputs instead damage a valid message. Any exception other than WireError, or a
decoded message that does not round-trip, is a crash (atheris reports it and exits 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from fuzz_targets import check_decode, check_unpack, mutate, sample_messages, split_frames

    import daq.wire  # noqa: F401

from daq.wire import encode

ENCODED = [encode(m) for m in sample_messages()]


def one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        check_decode(split_frames(data[1:]))
        check_unpack(data[1:])
    else:
        check_decode(mutate(ENCODED[data[0] // 2 % len(ENCODED)], data[1:]))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
