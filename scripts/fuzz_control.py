"""Coverage-guided fuzzing (atheris) of the MQTT command parser (daq.control.protocol.parse).

    python scripts/fuzz_control.py -atheris_runs=200000 -max_len=2048

The first bytes choose a topic (a real command topic or fuzzed text), the rest is the
payload. parse() must return a Request or raise ProtocolError with a known code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from fuzz_targets import check_control

    from daq.control import protocol as P

TOPICS = [f"{P.RUN_CMD}/{v}/alice" for v in
          ("configure", "start", "stop", "pause", "resume", "reset")] + [f"{P.DESIRED}/alice"]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    k = fdp.ConsumeIntInRange(0, len(TOPICS))
    topic = TOPICS[k] if k < len(TOPICS) else fdp.ConsumeUnicodeNoSurrogates(64)
    check_control(topic, fdp.ConsumeBytes(fdp.remaining_bytes()))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
