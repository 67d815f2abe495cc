"""Run files: wire messages framed as CRC-checked records, crash-consistent, with a spill index.

Layout (docs/runfile-format.md is the normative description; keep the two in step)::

    b"NA64RUN\\0"  u32 version  u32 header_len  header (msgpack map)  u32 CRC32C(header)
    record*        u32 length   u32 CRC32C(payload)  payload = pack_frames(encode(msg))
    index record   same framing, payload = b"NA64IDX\\0" + msgpack {"spills": ..., ...}
    trailer        u64 offset of the index record, b"NA64END\\0"

A writer creates `<path>.partial`, fsyncs it at every `spill_end` record and, on close,
appends the index and trailer, fsyncs, renames it to `<path>` and fsyncs the directory.
A reader accepts a closed file or a `.partial` one; it stops at the first torn or corrupt
record and reports exactly what it dropped.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import crc32c
import msgpack

from daq.errors import RunFileError, WireError
from daq.markers import SpillStart
from daq.wire import Kind, Message, decode, encode, pack_frames, unpack_frames

MAGIC = b"NA64RUN\0"
INDEX_MAGIC = b"NA64IDX\0"
END_MAGIC = b"NA64END\0"
FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial"

_PRE = struct.Struct("<8sII")  # magic, version, header length
_U32 = struct.Struct("<I")
_REC = struct.Struct("<II")  # payload length, CRC32C of payload
_TRAILER = struct.Struct("<Q8s")  # offset of the index record, END_MAGIC
_MAX_HEADER = 64 << 20  # a configuration snapshot is kilobytes; anything larger is garbage
_MAX_RECORD = 1 << 31

_RUN_KINDS = frozenset({Kind.RUN_START, Kind.RUN_STOP})


def partial_path(path: str | Path) -> Path:
    """The name a run file has while it is being written."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def rotated_path(path: str | Path, part: int) -> Path:
    """Name of part `part` of a rotated run file: part 0 is `path`, then <stem>.1<suffix>..."""
    p = Path(path)
    return p if part == 0 else p.with_name(f"{p.stem}.{part}{p.suffix}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _SpillTally:
    """Start/end markers of one spill: a spill is complete when every start has its end."""

    offset: int
    records: int = 0
    bytes: int = 0
    starts: int = 0
    ends: int = 0

    def note(self, msg: Message, nbytes: int) -> None:
        self.records += 1
        self.bytes += nbytes
        # a restarted builder starts the spill it joined again, flagged `resumed`, and ends
        # it once: that start continues the spill, it does not open a second one
        if msg.kind is Kind.SPILL_START and not (self.starts and SpillStart.of(msg).resumed):
            self.starts += 1
        elif msg.kind is Kind.SPILL_END:
            self.ends += 1

    @property
    def complete(self) -> bool:
        return self.ends >= max(self.starts, 1)


class RunFileWriter:
    """Write one run as framed records; crash-consistent at every spill end.

    With `max_bytes`, the writer moves on to `<stem>.1<suffix>`, `.2`, ... at the first
    point where the current file holds at least `max_bytes` and no spill is open, so that a
    spill never spans two files (the bound is soft by at most one spill).
    """

    def __init__(self, path: str | Path, *, run: int, config: dict, geometry_hash: str,
                 calibration_hash: str, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 1024:
            raise RunFileError(str(path), f"max_bytes={max_bytes} is below the 1024-byte minimum")
        self.path = Path(path)
        self.run = run
        self.max_bytes = max_bytes
        self._header = {"run": run, "config": config, "geometry": geometry_hash,
                        "calibration": calibration_hash}
        self._closed: list[Path] = []
        self._part = 0
        self._f: BinaryIO | None = None
        self._open_part()

    # -- files ---------------------------------------------------------------------------

    def _open_part(self) -> None:
        final = rotated_path(self.path, self._part)
        tmp = partial_path(final)
        if final.exists():
            raise RunFileError(str(final), "exists already; run files are never overwritten")
        header = dict(self._header, part=self._part, created=time.time())
        try:
            head = msgpack.packb(header, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise RunFileError(str(tmp), f"header cannot be encoded: {e}") from None
        try:
            self._f = open(tmp, "xb")  # noqa: SIM115 - lives as long as the writer
        except FileExistsError:
            raise RunFileError(str(tmp), "exists already (another writer?)") from None
        except OSError as e:
            raise RunFileError(str(tmp), f"cannot be created ({e.strerror})") from None
        self._tmp, self._final = tmp, final
        self._f.write(_PRE.pack(MAGIC, FORMAT_VERSION, len(head)))
        self._f.write(head)
        self._f.write(_U32.pack(crc32c.crc32c(head)))
        self._offset = _PRE.size + len(head) + _U32.size
        self._spills: dict[int, _SpillTally] = {}
        self._records = 0
        self._sync()
        _fsync_dir(tmp.parent)

    def flush(self) -> None:
        """Hand buffered records to the OS (no fsync): a killed process loses nothing flushed."""
        if self._f is not None:
            self._f.flush()

    def _sync(self) -> None:
        assert self._f is not None
        self._f.flush()
        os.fsync(self._f.fileno())

    @property
    def bytes_written(self) -> int:
        """Bytes in the current file so far (header included)."""
        return self._offset

    @property
    def current_path(self) -> Path:
        """The `.partial` file being written."""
        return self._tmp

    # -- records -------------------------------------------------------------------------

    def write(self, msg: Message) -> int:
        """Append one message as a record; returns the bytes written. Fsyncs at spill_end."""
        if self._f is None:
            raise RunFileError(str(self.path), "writer is closed")
        try:
            parts = pack_frames(encode(msg))
        except WireError as e:
            raise RunFileError(str(self._tmp), f"message cannot be encoded: {e}") from None
        size = sum(memoryview(p).nbytes for p in parts)
        crc = 0
        for p in parts:
            crc = crc32c.crc32c(p, crc)
        try:
            self._f.write(_REC.pack(size, crc))
            for p in parts:
                self._f.write(p)
        except OSError as e:
            raise RunFileError(str(self._tmp), f"write failed ({e.strerror})", self._offset) \
                from None
        n = _REC.size + size
        if msg.kind not in _RUN_KINDS:
            tally = self._spills.setdefault(msg.spill, _SpillTally(self._offset))
            tally.note(msg, n)
        self._offset += n
        self._records += 1
        if msg.kind is Kind.SPILL_END:
            self._sync()
            if self.max_bytes is not None and self._offset >= self.max_bytes \
                    and all(t.complete for t in self._spills.values()):
                self._close_part()
                self._part += 1
                self._open_part()
        return n

    def _close_part(self) -> None:
        assert self._f is not None
        index = {"spills": {s: [t.offset, t.records, t.bytes, t.starts, t.ends]
                            for s, t in self._spills.items()},
                 "records": self._records, "part": self._part}
        payload = INDEX_MAGIC + msgpack.packb(index, use_bin_type=True)
        index_offset = self._offset
        self._f.write(_REC.pack(len(payload), crc32c.crc32c(payload)))
        self._f.write(payload)
        self._f.write(_TRAILER.pack(index_offset, END_MAGIC))
        self._sync()
        self._f.close()
        self._f = None
        os.replace(self._tmp, self._final)
        _fsync_dir(self._final.parent)
        self._closed.append(self._final)

    def close(self) -> list[Path]:
        """Finish the file(s): index, trailer, fsync, rename, fsync the directory."""
        if self._f is not None:
            self._close_part()
        return list(self._closed)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass
class SpillInfo:
    """What a file holds of one spill."""

    offset: int
    records: int
    bytes: int
    complete: bool


@dataclass
class ReadReport:
    """What a reader found. Filled while iterating; final once iteration has ended."""

    records: int = 0
    bytes_read: int = 0
    bytes_dropped: int = 0
    dropped_at: int | None = None
    torn: bool = False
    reason: str = ""
    torn_spill: int | None = None
    closed_cleanly: bool = False
    spills: dict[int, SpillInfo] = field(default_factory=dict)


class RunFileReader:
    """Read a closed or a `.partial` run file; every complete, valid record is returned."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists() and partial_path(self.path).exists():
            self.path = partial_path(self.path)
        try:
            self._size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                self.header, self._data_start = self._read_header(f)
                self._index = self._read_index(f)
        except OSError as e:
            raise RunFileError(str(self.path), f"cannot be read ({e.strerror})") from None
        self.report = ReadReport()

    def _read_header(self, f: io.BufferedReader) -> tuple[dict[str, Any], int]:
        pre = f.read(_PRE.size)
        if len(pre) < _PRE.size or pre[:8] != MAGIC:
            raise RunFileError(str(self.path), "not a run file (bad magic)", 0)
        _, version, hlen = _PRE.unpack(pre)
        if version != FORMAT_VERSION:
            raise RunFileError(str(self.path), f"format version {version}, this reader reads "
                               f"{FORMAT_VERSION}", 8)
        if hlen > _MAX_HEADER:
            raise RunFileError(str(self.path), f"header length {hlen} is implausible", 12)
        head = f.read(hlen)
        tail = f.read(_U32.size)
        if len(head) < hlen or len(tail) < _U32.size:
            raise RunFileError(str(self.path), "file header is truncated", _PRE.size)
        if _U32.unpack(tail)[0] != crc32c.crc32c(head):
            raise RunFileError(str(self.path), "file header fails its CRC32C", _PRE.size)
        try:
            header = msgpack.unpackb(head, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise RunFileError(str(self.path), f"file header is not msgpack ({e})") from None
        if not isinstance(header, dict):
            raise RunFileError(str(self.path), "file header is not a map", _PRE.size)
        return header, _PRE.size + hlen + _U32.size

    def _read_index(self, f: io.BufferedReader) -> dict[int, SpillInfo] | None:
        """The index of a cleanly closed file, or None (then iteration rebuilds it)."""
        if self._size < self._data_start + _TRAILER.size:
            return None
        f.seek(self._size - _TRAILER.size)
        off, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != END_MAGIC or not self._data_start <= off < self._size:
            return None
        f.seek(off)
        rec = f.read(_REC.size)
        if len(rec) < _REC.size:
            return None
        n, crc = _REC.unpack(rec)
        payload = f.read(n)
        if (len(payload) != n or crc32c.crc32c(payload) != crc
                or not payload.startswith(INDEX_MAGIC)
                or off + _REC.size + n + _TRAILER.size != self._size):
            return None
        index = msgpack.unpackb(payload[len(INDEX_MAGIC):], raw=False, strict_map_key=False)
        self._index_offset = off
        return {int(s): SpillInfo(v[0], v[1], v[2], v[4] >= max(v[3], 1))
                for s, v in index["spills"].items()}

    @property
    def spill_index(self) -> dict[int, SpillInfo] | None:
        """Spill -> where it starts, from the footer of a closed file (None for a .partial)."""
        return self._index

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    def messages(self, spills: tuple[int, int] | None = None) -> Iterator[Message]:
        """Messages in file order; with `spills=(a, b)` only spills a..b inclusive (run
        markers are always included). Fills `report` as it goes."""
        start = self._data_start
        if spills is not None and self._index is not None:
            inside = [i.offset for s, i in self._index.items() if spills[0] <= s <= spills[1]]
            # run_start precedes every spill; the seek skips only the spills before `a`
            start = min(inside, default=self._data_start)
        with open(self.path, "rb") as f:
            yield from self._scan(f, start, spills)

    def _scan(self, f: io.BufferedReader, start: int, spills: tuple[int, int] | None
              ) -> Iterator[Message]:
        rep = self.report = ReadReport()
        tallies: dict[int, _SpillTally] = {}
        if start > self._data_start:  # seeking: the run_start is read first
            f.seek(self._data_start)
            msg, _ = self._next(f, self._data_start, rep)
            if msg is not None and msg.kind is Kind.RUN_START:
                yield msg
        end = getattr(self, "_index_offset", self._size) if self._index is not None \
            else self._size
        off = start
        f.seek(off)
        while off < end:
            msg, n = self._next(f, off, rep)
            if msg is None:
                break
            if msg.kind not in _RUN_KINDS:
                tallies.setdefault(msg.spill, _SpillTally(off)).note(msg, n)
            off += n
            rep.records += 1
            rep.bytes_read += n
            if spills is None or msg.kind in _RUN_KINDS or spills[0] <= msg.spill <= spills[1]:
                yield msg
            elif msg.spill > spills[1] and all(
                    t.complete for s, t in tallies.items() if s <= spills[1]):
                break  # past the range and nothing of it is still open: the rest is skipped
        if rep.reason and not rep.torn:  # the index record itself: end of a closed file
            rep.reason = ""
        rep.closed_cleanly = self._index is not None and not rep.torn \
            and not self.path.name.endswith(PARTIAL_SUFFIX)
        if not rep.closed_cleanly and not rep.torn and self._index is None:
            rep.reason = rep.reason or "file was not closed"
        rep.spills = {s: SpillInfo(t.offset, t.records, t.bytes, t.complete)
                      for s, t in sorted(tallies.items())}
        if not rep.closed_cleanly:
            open_spills = [s for s, t in tallies.items() if not t.complete]
            rep.torn_spill = max(open_spills) if open_spills else None

    def _next(self, f: io.BufferedReader, off: int, rep: ReadReport) -> tuple[Message | None, int]:
        """Read the record at `off`; on a torn or corrupt one, fill the report and say None."""
        head = f.read(_REC.size)
        if len(head) == 0 and off == self._size:
            return None, 0
        if len(head) < _REC.size:
            return self._drop(rep, off, "torn record header")
        n, crc = _REC.unpack(head)
        if n > _MAX_RECORD or off + _REC.size + n > self._size:
            return self._drop(rep, off, f"record of {n} bytes runs past the end of the file")
        payload = bytearray(n)
        if f.readinto(payload) != n:
            return self._drop(rep, off, "torn record payload")
        if crc32c.crc32c(payload) != crc:
            return self._drop(rep, off, "record fails its CRC32C")
        if payload.startswith(INDEX_MAGIC):
            if self._index is None:  # an index where none was expected: a truncated close
                return self._drop(rep, off, "index record without a valid trailer")
            rep.reason = "index"
            return None, 0
        try:
            return decode(unpack_frames(payload)), _REC.size + n
        except WireError as e:
            return self._drop(rep, off, f"record does not decode ({e})")

    def _drop(self, rep: ReadReport, off: int, reason: str) -> tuple[None, int]:
        rep.torn = True
        rep.reason = f"{reason} at byte {off}"
        rep.dropped_at = off
        rep.bytes_dropped = self._size - off
        return None, 0


def read_all(path: str | Path) -> tuple[list[Message], ReadReport]:
    """Every readable message of a file and the reader's report."""
    r = RunFileReader(path)
    msgs = list(r.messages())
    return msgs, r.report
