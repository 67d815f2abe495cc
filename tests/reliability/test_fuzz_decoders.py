"""Every decoder that reads a socket or a file, fuzzed: bad input is a typed error, never a crash.

The same targets run under atheris (scripts/fuzz_wire.py, fuzz_runfile.py, fuzz_control.py)
for long coverage-guided runs; here hypothesis runs them on every suite run.
"""

from __future__ import annotations

from pathlib import Path

from fuzz_targets import (
    check_control,
    check_decode,
    check_runfile,
    check_unpack,
    mutate,
    sample_messages,
    split_frames,
    write_sample_file,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daq.control import protocol as P
from daq.wire import encode, pack_frames

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
ENCODED = [encode(m) for m in sample_messages()]


@FUZZ
@given(st.binary(max_size=2048))
def test_wire_decode_of_arbitrary_bytes(data: bytes) -> None:
    check_decode(split_frames(data))


@FUZZ
@given(st.sampled_from(range(len(ENCODED))), st.binary(min_size=4, max_size=64))
def test_wire_decode_of_damaged_messages(which: int, ops: bytes) -> None:
    check_decode(mutate(ENCODED[which], ops))


@FUZZ
@given(st.sampled_from(range(len(ENCODED))), st.binary(min_size=4, max_size=32))
def test_run_file_record_framing_of_damaged_payloads(which: int, ops: bytes) -> None:
    payload = b"".join(bytes(memoryview(p).cast("B")) for p in pack_frames(ENCODED[which]))
    for frames in (mutate([payload], ops), [ops]):
        check_unpack(frames[0] if frames else b"")


@FUZZ
@given(st.text(max_size=80), st.binary(max_size=512))
def test_control_parse_of_arbitrary_topics_and_payloads(topic: str, payload: bytes) -> None:
    check_control(topic, payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4), max_leaves=10)


@FUZZ
@given(st.sampled_from([f"{P.RUN_CMD}/{v}/alice" for v in
                        ("configure", "start", "stop", "pause", "resume", "reset", "bogus")]
                       + [f"{P.DESIRED}/alice", f"{P.DESIRED}/bad user", "na64/x"]),
       st.dictionaries(st.sampled_from(["id", "params", "reason", "set", "config", "comment",
                                        "x"]), json_values, max_size=5))
def test_control_parse_of_structured_requests(topic: str, body: dict) -> None:
    import json

    check_control(topic, json.dumps(body).encode())


@FUZZ
@given(data=st.data())
def test_run_file_reader_of_damaged_files(data: st.DataObject) -> None:
    d = Path(__import__("tempfile").mkdtemp(prefix="na64-fuzz-"))
    path, msgs, ends = write_sample_file(d)
    raw = path.read_bytes()
    path.unlink()
    d.rmdir()
    how = data.draw(st.sampled_from(["truncate", "flip", "append"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        check_runfile(raw[:at], ends, msgs, at)
    elif how == "flip":
        bad = bytearray(raw)
        bad[at] ^= data.draw(st.integers(1, 255))
        check_runfile(bytes(bad), ends, msgs, at)
    else:  # garbage after a closed file (a writer that crashed while appending)
        check_runfile(raw + data.draw(st.binary(max_size=64)), ends, msgs, len(raw))
