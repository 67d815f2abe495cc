"""Wire format v2: a msgpack header frame followed by one raw frame per numpy array.

The codec is sans-I/O: `encode` turns a `Message` into a list of buffers for
`zmq.Socket.send_multipart(copy=False)`, and `decode` turns received buffers back into a
`Message` whose arrays are views on those buffers (no copy). docs/wire-format.md is the
normative description; keep the two in step.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import crc32c
import msgpack
import numpy as np

from daq import markers
from daq.errors import WireError

FORMAT_VERSION = 2
#: versions `decode` reads: 1 had one CRC over all array frames (run files written before
#: per-array checksums); 2 has one CRC per array, so that a relay (the event builder)
#: forwards the checksums it verified instead of computing them again
READ_VERSIONS = (1, 2)

#: dtypes allowed in array frames, as numpy `dtype.str` (explicit little-endian).
ALLOWED_DTYPES = frozenset(
    {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8"}
)

_HEADER_KEYS = frozenset(
    {"v", "kind", "run", "spill", "seq", "src", "board", "first", "count", "arrays", "crc",
     "meta", "replay"}
)
_MAX_HEADER_BYTES = 1 << 20
_MAX_ARRAYS = 256
_MAX_DIMS = 4


class Kind(enum.StrEnum):
    """Message kinds. The string value is what travels in the header."""

    RUN_START = "run_start"
    RUN_STOP = "run_stop"
    SPILL_START = "spill_start"
    SPILL_END = "spill_end"
    SLICE = "slice"  # raw or built data: a block of consecutive events of one spill
    FEATURES = "features"  # per-event features and trigger bits of one slice (to monitors)
    ACCEPTED = "accepted"  # accepted events of one slice: data, features, bits (to recorder)
    CONFIG = "config"  # a trigger configuration announced in the stream
    END_OF_STREAM = "eos"


#: kinds whose arrays are per event: every array's first dimension equals `count`, except
#: per-hit arrays of zero-suppressed boards (`is_hit_array`), whose axis 0 runs over hits.
PER_EVENT_KINDS = frozenset({Kind.SLICE, Kind.FEATURES, Kind.ACCEPTED})
#: names of per-hit arrays start with this (after a `BOARD.` prefix in built slices)
HIT_PREFIX = "hit_"


def is_hit_array(name: str) -> bool:
    """True for a per-hit array of a zero-suppressed board (`hit_amp`, `ECAL.hit_amp`)."""
    return name.rpartition(".")[2].startswith(HIT_PREFIX)


@dataclass(slots=True)
class Message:
    """One decoded wire message.

    `arrays` keeps insertion order; that order is the frame order on the wire.
    `meta` holds kind-specific fields (scalers, configuration, reasons), msgpack-able only;
    read and write it through its kind's typed payload (`daq.markers`: `SpillEnd.of(msg)`,
    `SpillEnd(...).to_meta()`), which `decode` checks.
    """

    kind: Kind
    run: int = 0
    spill: int = 0
    seq: int = 0
    src: str = ""
    board: str = ""
    first: int = 0
    count: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    replay: bool = False
    #: not on the wire: each array as received (name -> (the array, its CRC, the buffer it
    #: was read from)). `encode` reuses the CRC for the very same array object instead of
    #: computing it again, and sends that buffer in its place: a received ZeroMQ frame goes
    #: out as a reference to the same message, not as a zero-copy NumPy buffer whose release
    #: pyzmq's garbage-collector thread must track (decision 0012)
    crcs: dict[str, tuple[np.ndarray, int, Any]] = field(default_factory=dict, compare=False,
                                                         repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (what it holds in memory, beside a small header)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def header(self, crc: int | list[int]) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "kind": str(self.kind),
            "run": self.run,
            "spill": self.spill,
            "seq": self.seq,
            "src": self.src,
            "board": self.board,
            "first": self.first,
            "count": self.count,
            "arrays": [[n, _DTYPE_STR.get(a.dtype) or a.dtype.str, list(a.shape)]
                       for n, a in self.arrays.items()],
            "crc": crc,
            "meta": self.meta,
            "replay": self.replay,
        }


def _wire_array(name: str, a: np.ndarray) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise WireError("dtype", f"array {name!r} is {type(a).__name__}, not a numpy array")
    if a.dtype.str not in ALLOWED_DTYPES:
        swapped = a.dtype.newbyteorder("<")
        if swapped.str in ALLOWED_DTYPES and a.dtype.byteorder == ">":
            a = a.astype(swapped)  # big-endian input: the one case where encode copies
        else:
            raise WireError("dtype", f"array {name!r} has dtype {a.dtype.str}, not allowed")
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def checksum(buffers: Sequence[Any]) -> int:
    """CRC32C (Castagnoli) over the array frames, in order, as one byte string (v1)."""
    crc = 0
    for b in buffers:
        crc = crc32c.crc32c(b, crc)
    return crc


def checksums(msg: Message) -> list[int]:
    """CRC32C of each array frame of `msg` (v2), reusing those it was received with."""
    known = msg.crcs
    out = []
    for name, a in msg.arrays.items():
        k = known.get(name)
        if k is not None and k[0] is a:
            out.append(k[1])
        else:  # the bytes as they go on the wire
            out.append(crc32c.crc32c(_wire_array(name, a).data))
    return out


def encode(msg: Message, *, with_crc: bool = True) -> list[Any]:
    """Encode to frames: header bytes, then the arrays themselves (zero-copy buffers).

    `with_crc=False` writes crc 0 meaning "not computed" (allowed on trusted inproc links).
    Refuses (WireError) a meta that `decode` would refuse: nothing unreadable is sent or
    written to a run file.
    """
    markers.check(msg.kind, msg.meta)
    arrays = {n: _wire_array(n, a) for n, a in msg.arrays.items()}
    if arrays is not msg.arrays:
        msg.arrays = arrays
    known = msg.crcs
    frames = [k[2] if (k := known.get(n)) is not None and k[0] is a else a
              for n, a in arrays.items()]
    crc: int | list[int] = checksums(msg) if with_crc else 0
    try:
        head = msgpack.packb(msg.header(crc), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError("header", f"header cannot be encoded: {e}") from None
    return [head, *frames]


def _need(h: Mapping[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    v = h.get(key)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        want = getattr(typ, "__name__", typ)
        raise WireError("header", f"field {key!r} is {v!r}, expected {want}")
    return v


def _need_uint(h: Mapping[str, Any], key: str) -> int:
    v = _need(h, key, int)
    if v < 0 or v >= 1 << 63:
        raise WireError("header", f"field {key!r} is {v}, expected 0 <= value < 2**63")
    return int(v)


def decode(frames: Sequence[Any], *, verify_crc: bool = True,
           forwarded: Collection[str] = ()) -> Message:
    """Decode received frames (bytes, memoryviews or zmq.Frame buffers) into a Message.

    `forwarded`: names of arrays this hop passes on without reading their values (the
    builder's detector samples and features). Their CRCs are kept for re-encoding but not
    checked here: the next hop that reads them checks the very same CRCs, which the front
    end computed, so damage anywhere on the way is still caught, once (decision 0012).
    Raises WireError naming what was wrong; never returns a partly valid message.
    """
    if not frames:
        raise WireError("truncated", "no frames")
    head = frames[0]
    if len(head) > _MAX_HEADER_BYTES:
        raise WireError("header", f"header frame is {len(head)} bytes, limit {_MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(head, raw=False, strict_map_key=True, max_bin_len=0,
                            max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise WireError("header", f"header is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(h, dict):
        raise WireError("header", f"header is a {type(h).__name__}, not a map")
    v = h.get("v")
    if type(v) is not int or v not in READ_VERSIONS:
        raise WireError("version", f"format version {v!r}, this decoder reads "
                                   f"{' and '.join(map(str, READ_VERSIONS))}")
    unknown = set(h) - _HEADER_KEYS
    missing = _HEADER_KEYS - set(h)
    if unknown:
        raise WireError("header", f"unknown header fields {sorted(map(str, unknown))}")
    if missing:
        raise WireError("truncated", f"header lacks fields {sorted(missing)}")
    try:
        kind = Kind(_need(h, "kind", str))
    except ValueError:
        raise WireError("kind", f"unknown message kind {h['kind']!r}") from None
    count = _need_uint(h, "count")
    specs = _need(h, "arrays", list)
    meta = _need(h, "meta", dict)
    markers.check(kind, meta)
    if len(specs) > _MAX_ARRAYS:
        raise WireError("shape", f"{len(specs)} arrays, limit {_MAX_ARRAYS}")
    if len(frames) - 1 != len(specs):
        reason = "truncated" if len(frames) - 1 < len(specs) else "shape"
        raise WireError(reason, f"header names {len(specs)} arrays, got {len(frames) - 1} frames")
    arrays: dict[str, np.ndarray] = {}
    for spec, buf in zip(specs, frames[1:], strict=True):
        name, arr = _decode_array(spec, buf)
        if name in arrays:
            raise WireError("shape", f"array {name!r} appears twice")
        if kind in PER_EVENT_KINDS and (arr.ndim == 0 or (arr.shape[0] != count
                                                          and not is_hit_array(name))):
            raise WireError("shape", f"array {name!r} has shape {arr.shape}, count is {count}")
        arrays[name] = arr
    crcs = _verify(h, v, arrays, frames[1:], verify_crc, forwarded)
    return Message(
        kind=kind,
        run=_need_uint(h, "run"),
        spill=_need_uint(h, "spill"),
        seq=_need_uint(h, "seq"),
        src=_need(h, "src", str),
        board=_need(h, "board", str),
        first=_need_uint(h, "first"),
        count=count,
        arrays=arrays,
        meta=meta,
        replay=_need(h, "replay", bool),
        crcs=crcs,
    )


def _verify(h: Mapping[str, Any], v: int, arrays: Mapping[str, np.ndarray],
            buffers: Sequence[Any], verify: bool, forwarded: Collection[str]
            ) -> dict[str, tuple[np.ndarray, int, Any]]:
    """Check the header's `crc` against the frames (but those of `forwarded` arrays); the
    per-array CRCs, for re-encoding."""
    crc = h["crc"]
    if v == 1 or crc == 0:
        crc = _need_uint(h, "crc")
        if verify and crc != 0 and (got := checksum(buffers)) != crc:
            raise WireError(
                "checksum", f"CRC32C of array frames is {got:#010x}, header says {crc:#010x}")
        return {}
    if not (isinstance(crc, list) and len(crc) == len(arrays)
            and all(type(c) is int and 0 <= c < 1 << 32 for c in crc)):
        raise WireError("header", f"crc {str(crc)[:80]} is not 0 or one uint32 per array "
                                  f"({len(arrays)})")
    out = {}
    for (name, a), buf, want in zip(arrays.items(), buffers, crc, strict=True):
        if verify and name not in forwarded and (got := crc32c.crc32c(buf)) != want:
            raise WireError(
                "checksum", f"CRC32C of array {name!r} is {got:#010x}, header says {want:#010x}")
        out[name] = (a, want, buf)
    return out


_DTYPES = {dt: np.dtype(dt) for dt in ALLOWED_DTYPES}
#: `dtype.str` builds a new string at every call (~5x a dict lookup): headers name each array
_DTYPE_STR = {d: d.str for d in _DTYPES.values()}


def _decode_array(spec: Any, buf: Any) -> tuple[str, np.ndarray]:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise WireError("header", f"array spec {spec!r} is not [name, dtype, shape]")
    name, dt, shape = spec
    if not isinstance(name, str) or not name:
        raise WireError("header", f"array name {name!r} is not a non-empty string")
    if not isinstance(dt, str) or dt not in ALLOWED_DTYPES:
        raise WireError(
            "dtype", f"array {name!r} has dtype {dt!r}, allowed {sorted(ALLOWED_DTYPES)}"
        )
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40
                       for d in shape)):
        raise WireError("shape", f"array {name!r} has shape {shape!r}")
    dtype = _DTYPES[dt]
    nbytes = dtype.itemsize * math.prod(shape)  # Python ints: no overflow, no NumPy call
    mv = memoryview(buf)
    if mv.nbytes != nbytes:
        reason = "truncated" if mv.nbytes < nbytes else "shape"
        raise WireError(
            reason, f"array {name!r} {dt}{tuple(shape)} needs {nbytes} bytes, got {mv.nbytes}"
        )
    arr = np.frombuffer(mv, dtype=dtype).reshape(shape)
    return name, arr


# --- framing of a multipart message into one contiguous record (run files) ---------------

_U32 = struct.Struct("<I")


def pack_frames(frames: Sequence[Any]) -> list[Any]:
    """Lay out frames as one record payload: u32 n, n x u32 length, then the frames.

    Returns a list of buffers to write in order (no copy of the frames themselves).
    """
    lens = [memoryview(f).nbytes for f in frames]
    index = struct.pack(f"<I{len(lens)}I", len(lens), *lens)
    return [index, *frames]


def unpack_frames(payload: Any) -> list[memoryview]:
    """Inverse of pack_frames: views into `payload`, no copy. Raises WireError if malformed."""
    mv = memoryview(payload).cast("B")
    if mv.nbytes < 4:
        raise WireError("truncated", "record payload shorter than its frame count")
    (n,) = _U32.unpack_from(mv, 0)
    if n == 0 or n > _MAX_ARRAYS + 1:
        raise WireError("shape", f"record names {n} frames")
    off = 4 + 4 * n
    if mv.nbytes < off:
        raise WireError("truncated", f"record frame index needs {off} bytes, has {mv.nbytes}")
    lens = struct.unpack_from(f"<{n}I", mv, 4)
    if off + sum(lens) != mv.nbytes:
        raise WireError("truncated", f"record frames need {off + sum(lens)} bytes, has {mv.nbytes}")
    out = []
    for ln in lens:
        out.append(mv[off:off + ln])
        off += ln
    return out
