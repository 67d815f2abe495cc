"""Coverage-guided fuzzing (atheris) of the run-file reader on damaged files.

    python scripts/fuzz_runfile.py -atheris_runs=50000

Each input damages a valid closed run file (truncate, flip bytes, append garbage). The
reader must raise RunFileError (unreadable file header) or return exactly the records
before the damage and report the tear; anything else is a crash.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from fuzz_targets import check_runfile, write_sample_file

    import daq.runfile  # noqa: F401

_DIR = Path(tempfile.mkdtemp(prefix="na64-fuzz-"))
_PATH, MSGS, ENDS = write_sample_file(_DIR)
RAW = _PATH.read_bytes()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    how = fdp.ConsumeIntInRange(0, 2)
    at = fdp.ConsumeIntInRange(0, len(RAW) - 1)
    if how == 0:
        check_runfile(RAW[:at], ENDS, MSGS, at)
    elif how == 1:
        bad = bytearray(RAW)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            pos = fdp.ConsumeIntInRange(at, len(RAW) - 1)
            bad[pos] ^= fdp.ConsumeIntInRange(1, 255)
        check_runfile(bytes(bad), ENDS, MSGS, at)
    else:
        check_runfile(RAW + fdp.ConsumeBytes(256), ENDS, MSGS, len(RAW))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
