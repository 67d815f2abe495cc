"""The wire codec: round trips, every malformed input refused with WireError, no copies."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from marker_data import metas

from daq.errors import DaqError, WireError
from daq.wire import (
    ALLOWED_DTYPES,
    FORMAT_VERSION,
    PER_EVENT_KINDS,
    Kind,
    Message,
    checksum,
    decode,
    encode,
    pack_frames,
    unpack_frames,
)

DTYPES = sorted(ALLOWED_DTYPES)
u63 = st.integers(0, 2**63 - 1)
names = st.text("abcdefghijklmnopqrstuvwxyz._ABCDE0123456789", min_size=1, max_size=12)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(list(Kind)))
    count = draw(st.integers(0, 40))
    arrays = {}
    for name in draw(st.lists(names, max_size=4, unique=True)):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        tail = draw(st.lists(st.integers(0, 5), max_size=2))
        shape = (count, *tail) if kind in PER_EVENT_KINDS else tuple(
            draw(st.lists(st.integers(0, 6), max_size=3)))
        arrays[name] = draw(hnp.arrays(dtype, shape))
    return Message(
        kind=kind, run=draw(u63), spill=draw(u63), seq=draw(u63), src=draw(st.text(max_size=10)),
        board=draw(st.sampled_from(["", "ALL", "ECAL", "BEAM"])), first=draw(u63), count=count,
        arrays=arrays, meta=draw(metas(kind)),
        replay=draw(st.booleans()),
    )


@given(messages())
@settings(max_examples=200, deadline=None)
def test_round_trip_every_kind(msg: Message) -> None:
    out = decode(encode(msg))
    for f in ("kind", "run", "spill", "seq", "src", "board", "first", "count", "meta", "replay"):
        assert getattr(out, f) == getattr(msg, f), f
    assert list(out.arrays) == list(msg.arrays)
    for name, a in msg.arrays.items():
        b = out.arrays[name]
        assert b.dtype == a.dtype and b.shape == a.shape
        assert a.tobytes() == b.tobytes()  # bitwise, NaNs included


def test_every_kind_is_covered() -> None:
    assert {k.value for k in Kind} >= {"run_start", "run_stop", "spill_start", "spill_end",
                                       "slice", "eos"}


def _slice() -> Message:
    wave = np.arange(3 * 4 * 8, dtype=np.int16).reshape(3, 4, 8)
    return Message(Kind.SLICE, run=7, spill=2, seq=11, src="ECAL", board="ECAL", first=4096,
                   count=3, arrays={"wave": wave, "ts": np.array([1, 2, 3], np.int64)},
                   meta={"mode": "waveform"})


def _header(frames: list) -> dict:
    return msgpack.unpackb(frames[0])


def _with_header(frames: list, **changes: object) -> list:
    h = _header(frames)
    h.update(changes)
    return [msgpack.packb(h), *frames[1:]]


def _reason(frames: list) -> str:
    with pytest.raises(WireError) as e:
        decode(frames)
    assert isinstance(e.value, DaqError)
    assert str(e.value)  # says what was wrong
    return e.value.reason


def test_truncated_inputs_are_refused() -> None:
    frames = encode(_slice())
    assert _reason([]) == "truncated"
    assert _reason(frames[:-1]) == "truncated"  # a frame missing
    short = memoryview(frames[1]).tobytes()[:-2]
    assert _reason([frames[0], short, frames[2]]) == "truncated"  # a frame cut short
    h = _header(frames)
    del h["crc"]
    assert _reason([msgpack.packb(h), *frames[1:]]) == "truncated"  # header field missing
    assert _reason([frames[0][: len(frames[0]) // 2], *frames[1:]]) == "header"


def test_wrong_version_and_unknown_kind() -> None:
    frames = encode(_slice())
    assert _reason(_with_header(frames, v=FORMAT_VERSION + 1)) == "version"
    assert _reason(_with_header(frames, v="1")) == "version"
    assert _reason(_with_header(frames, kind="teleport")) == "kind"


def test_shapes_that_do_not_match_the_frames() -> None:
    frames = encode(_slice())
    h = _header(frames)
    h["arrays"][0][2] = [3, 4, 9]  # more bytes than the frame holds
    assert _reason([msgpack.packb(h), *frames[1:]]) == "truncated"
    h["arrays"][0][2] = [3, 4, 4]  # fewer bytes than the frame holds
    assert _reason([msgpack.packb(h), *frames[1:]]) == "shape"
    assert _reason(_with_header(frames, count=4)) == "shape"  # per-event axis != count
    assert _reason([*frames, b"extra"]) == "shape"  # a frame the header does not name
    h = _header(frames)
    h["arrays"][0][2] = [-1, 4, 8]
    assert _reason([msgpack.packb(h), *frames[1:]]) == "shape"


def test_bad_checksum() -> None:
    frames = encode(_slice())
    wave = bytearray(memoryview(frames[1]).tobytes())
    wave[5] ^= 0x40
    assert _reason([frames[0], bytes(wave), frames[2]]) == "checksum"


def test_checksum_error_names_the_array_and_the_crc_list_is_checked() -> None:
    frames = encode(_slice())
    names = [spec[0] for spec in _header(frames)["arrays"]]
    bad = bytearray(memoryview(frames[2]).tobytes())
    bad[0] ^= 1
    with pytest.raises(WireError) as e:
        decode([frames[0], frames[1], bytes(bad)])
    assert e.value.reason == "checksum" and repr(names[1]) in str(e.value)
    crc = _header(frames)["crc"]
    assert isinstance(crc, list) and len(crc) == len(names)
    assert _reason(_with_header(frames, crc=crc[:-1])) == "header"  # one per array
    assert _reason(_with_header(frames, crc=[*crc[:-1], 2**32])) == "header"
    assert _reason(_with_header(frames, crc=[*crc[:-1], True])) == "header"
    # 0: not computed (a trusted link); the frames are then taken as they are
    assert decode([*_with_header(frames, crc=0)[:1], frames[1], bytes(bad)]).count == 3


def test_version_1_with_one_crc_over_all_frames_is_still_read() -> None:
    """Run files written before per-array checksums keep replaying."""
    frames = encode(_slice())
    whole = checksum(frames[1:])
    old = _with_header(frames, v=1, crc=whole)
    msg = decode(old)
    assert np.array_equal(msg.arrays["wave"], _slice().arrays["wave"])
    assert msg.crcs == {}  # nothing to reuse: encoding it again computes v2 checksums
    assert _header(encode(msg))["crc"] == _header(frames)["crc"]
    bad = bytearray(memoryview(frames[1]).tobytes())
    bad[3] ^= 2
    assert _reason([old[0], bytes(bad), frames[2]]) == "checksum"
    assert _reason(_with_header(frames, v=1)) == "header"  # v1's crc is one uint32


def test_a_relay_reuses_the_checksums_it_verified_for_the_same_arrays_only() -> None:
    frames = encode(_slice())
    crc = _header(frames)["crc"]
    msg = decode(frames)
    first = next(iter(msg.arrays))
    # forwarded unchanged: the received CRCs, not computed again (a wrong one shows it)
    msg.crcs[first] = (msg.arrays[first], 12345, msg.crcs[first][2])
    assert _header(encode(msg))["crc"] == [12345, crc[1]]
    # an array replaced under the same name gets its own checksum
    msg.arrays[first] = msg.arrays[first].copy()
    assert _header(encode(msg))["crc"] == crc


def test_a_relay_sends_the_frames_it_received_for_the_arrays_it_forwards() -> None:
    """Forwarded unchanged, an array goes out as the very ZeroMQ frame it came in (a
    reference to the same message, no buffer for pyzmq's garbage collector to track); a
    replaced one as itself. The next hop reads both back, CRCs verified."""
    ctx = zmq.Context()
    a, b_in, b_out, c = (ctx.socket(t) for t in (zmq.PUSH, zmq.PULL, zmq.PUSH, zmq.PULL))
    try:
        a.bind("inproc://relay-in")
        b_in.connect("inproc://relay-in")
        b_out.bind("inproc://relay-out")
        c.connect("inproc://relay-out")
        c.rcvtimeo = 10_000  # a frame that never arrives fails the test, not the suite
        a.send_multipart(encode(_slice()), copy=False)
        got = b_in.recv_multipart(copy=False)
        msg = decode(got)
        msg.arrays["ts"] = msg.arrays["ts"] + 1  # changed: a new array
        frames = encode(msg)
        assert frames[1] is got[1]  # wave: the received frame itself
        assert isinstance(frames[2], np.ndarray)
        b_out.send_multipart(frames, copy=False)
        again = decode(c.recv_multipart(copy=False))
        assert np.array_equal(again.arrays["wave"], _slice().arrays["wave"])
        assert np.array_equal(again.arrays["ts"], [2, 3, 4])
    finally:
        for s in (a, b_in, b_out, c):
            s.close(linger=0)
        ctx.term()


def test_a_forwarded_array_is_checked_by_the_next_hop_against_the_first_hops_crc() -> None:
    """A hop that forwards an array unread (the builder's detector values) does not check
    its CRC; the hop that reads it does, against the CRC its sender computed, so damage
    between them is still found and named; the arrays the hop reads are checked there."""
    frames = encode(_slice())
    bad = np.array(frames[1], copy=True)  # wave, damaged on the first hop
    bad.flat[5] += 1
    relayed = decode([frames[0], bad, frames[2]], forwarded={"wave"})
    with pytest.raises(WireError) as e:
        decode(encode(relayed))
    assert e.value.reason == "checksum" and "'wave'" in str(e.value)
    ts_bad = np.array(frames[2], copy=True)
    ts_bad[0] += 1
    with pytest.raises(WireError) as e:
        decode([frames[0], frames[1], ts_bad], forwarded={"wave"})
    assert e.value.reason == "checksum" and "'ts'" in str(e.value)


@pytest.mark.parametrize("dt", [">i2", "|O", "<c8", "<f2", "<U4", 5])
def test_wrong_dtype(dt: object) -> None:
    frames = encode(_slice())
    h = _header(frames)
    h["arrays"][0][1] = dt
    assert _reason([msgpack.packb(h), *frames[1:]]) == "dtype"


def test_encode_refuses_what_it_cannot_send() -> None:
    with pytest.raises(WireError) as e:
        encode(Message(Kind.SLICE, arrays={"x": np.zeros(2, dtype=np.complex64)}, count=2))
    assert e.value.reason == "dtype"
    with pytest.raises(WireError):
        encode(Message(Kind.SLICE, meta={"x": object()}))


def test_header_field_types_are_checked() -> None:
    frames = encode(_slice())
    for field, bad in [("run", -1), ("spill", "2"), ("seq", True), ("src", 3), ("meta", []),
                       ("replay", 1), ("arrays", {}), ("count", 2**63)]:
        assert _reason(_with_header(frames, **{field: bad})) in {"header", "shape"}, field
    assert _reason(_with_header(frames, extra=1)) == "header"
    assert _reason([msgpack.packb([1, 2, 3]), *frames[1:]]) == "header"


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_garbage_only_ever_raises_wire_error(frames: list[bytes]) -> None:
    try:
        msg = decode(frames)
    except WireError:
        return
    # the rare garbage that decodes must be a whole, valid message
    assert isinstance(msg.kind, Kind)


@given(messages(), st.data())
@settings(max_examples=150, deadline=None)
def test_any_single_byte_flip_is_caught_or_harmless(msg: Message, data: st.DataObject) -> None:
    """A flipped byte gives WireError, or a message that re-encodes to the flipped bytes."""
    frames = [memoryview(f).tobytes() for f in encode(msg)]
    i = data.draw(st.integers(0, len(frames) - 1))
    if not frames[i]:
        return
    j = data.draw(st.integers(0, len(frames[i]) - 1))
    b = bytearray(frames[i])
    b[j] ^= data.draw(st.integers(1, 255))
    frames[i] = bytes(b)
    try:
        out = decode(frames)
    except WireError:
        return
    assert i == 0  # array bytes are covered by the CRC; only header edits may survive
    again = [memoryview(f).tobytes() for f in encode(out)]
    assert again[1:] == frames[1:]


def test_encode_does_not_copy_arrays() -> None:
    msg = _slice()
    frames = encode(msg)
    for frame, arr in zip(frames[1:], msg.arrays.values(), strict=True):
        assert np.shares_memory(np.frombuffer(frame, dtype=np.uint8), arr)


def test_decode_does_not_copy_arrays() -> None:
    frames = [memoryview(f).tobytes() if i == 0 else bytearray(memoryview(f).tobytes())
              for i, f in enumerate(encode(_slice()))]
    out = decode(frames)
    for frame, arr in zip(frames[1:], out.arrays.values(), strict=True):
        assert np.shares_memory(np.frombuffer(frame, dtype=np.uint8), arr)
    frames[1][0] ^= 0xFF  # the decoded array is a view: it sees the change
    assert out.arrays["wave"].view(np.uint8).ravel()[0] == frames[1][0]


def test_zero_copy_through_a_real_zmq_socket() -> None:
    ctx = zmq.Context()
    try:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        pull.bind("inproc://wire-test")
        push.connect("inproc://wire-test")
        big = np.arange(1024 * 109 * 32, dtype=np.int16).reshape(1024, 109, 32)
        msg = Message(Kind.SLICE, count=1024, arrays={"wave": big})
        push.send_multipart(encode(msg), copy=False)
        zframes = pull.recv_multipart(copy=False)
        out = decode([f.buffer for f in zframes])
        received = np.frombuffer(zframes[1].buffer, dtype=np.uint8)
        assert np.shares_memory(out.arrays["wave"], received)
        assert np.array_equal(out.arrays["wave"], big)
        push.close(0)
        pull.close(0)
    finally:
        ctx.term()


def test_record_framing_round_trip_without_copy() -> None:
    frames = encode(_slice())
    payload = b"".join(memoryview(p).tobytes() for p in pack_frames(frames))
    views = unpack_frames(payload)
    assert [bytes(v) for v in views] == [memoryview(f).tobytes() for f in frames]
    out = decode(views)
    assert np.shares_memory(np.frombuffer(payload, np.uint8), out.arrays["wave"])
    with pytest.raises(WireError):
        unpack_frames(payload[:-1])
    with pytest.raises(WireError):
        unpack_frames(b"\x00\x00")
