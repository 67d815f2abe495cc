"""What a run file holds (its kind), and its events as blocks of columns, slice by slice.

Every file the system writes is a run file (docs/runfile-format.md); what its records are
tells its kind:

- `raw` (`simulate --out`, a recorder in raw mode): every event, built and run through the
  trigger here;
- `built` (a capture of the builder's output): every event, run through the trigger here;
- `recorded` (the recorder: `demo`, `up`, replay runs): the accepted events as recorded;
- `features` (a capture of a worker's features stream): features of every event, no hits;
- `truth` (`simulate --truth`): the simulator's truth per event;
- `empty` (markers only): none.

A block is one slice's events: per-event columns (axis 0 the event: `event`, `ts`, the
features, ...) and each board's arrays under `B.` as the board sent them (`B.nhit` and
`B.hit_*` in the hits layout, `B.wave` for full waveforms).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq.geometry import BOARD_NAMES
from daq.markers import mode_of
from daq.runfile import RunFileReader
from daq.wire import Kind, Message

TRUTH_BOARD = "TRUTH"


class FileKind(enum.StrEnum):
    RAW = "raw"
    BUILT = "built"
    RECORDED = "recorded"
    FEATURES = "features"
    TRUTH = "truth"
    EMPTY = "empty"


def kind_of(msg: Message) -> FileKind | None:
    """The kind of file a data message belongs to (None for markers)."""
    if msg.kind is Kind.ACCEPTED:
        return FileKind.RECORDED
    if msg.kind is Kind.FEATURES:
        return FileKind.FEATURES
    if msg.kind is not Kind.SLICE:
        return None
    if msg.board == "ALL":
        return FileKind.BUILT
    return FileKind.TRUTH if msg.board == TRUTH_BOARD else FileKind.RAW


@dataclass(frozen=True)
class FileInfo:
    """A run file at a glance: read from its header, its index and its first records."""

    path: Path
    kind: FileKind
    run: int
    replay: bool
    mode: str | None
    spills: tuple[int, ...]
    header: dict[str, Any] = field(repr=False)
    closed_cleanly: bool

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration snapshot from the file header."""
        c = self.header.get("config")
        return c if isinstance(c, dict) else {}


def probe(path: str | Path) -> FileInfo:
    """Kind, run, mode and spills of a run file, without reading its events.

    A closed file is read up to its first data record (its spills come from the index);
    a `.partial` file, or one without data, is scanned to the end.
    """
    r = RunFileReader(path)
    kind: FileKind | None = None
    mode: str | None = None
    replay = False
    run = int(r.header.get("run", 0) or 0)
    spills: set[int] = set()
    for m in r.messages():
        replay = replay or m.replay
        if m.kind is Kind.RUN_START:
            run = m.run
            mode = mode or mode_of(m)
        elif m.kind not in (Kind.RUN_STOP, Kind.END_OF_STREAM):
            spills.add(m.spill)
        k = kind_of(m)
        if k is not None and kind is None:
            kind, mode = k, mode_of(m) or mode
            if r.spill_index is not None:
                break
    index = r.spill_index
    if index is not None and kind is not None:
        spills = set(index)
        closed = True
    else:
        closed = r.report.closed_cleanly
    return FileInfo(path=r.path, kind=kind or FileKind.EMPTY, run=run, replay=replay,
                    mode=mode, spills=tuple(sorted(spills)), header=dict(r.header),
                    closed_cleanly=closed)


@dataclass
class Block:
    """The events of one slice: columns with the event on axis 0, and board arrays."""

    run: int
    spill: int
    first: int
    count: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def boards(self) -> list[str]:
        """Boards with arrays in the block, in geometry order."""
        present = {n.partition(".")[0] for n in self.arrays if "." in n}
        return [b for b in BOARD_NAMES if b in present] + sorted(present - set(BOARD_NAMES))


def _numbered(msg: Message) -> dict[str, np.ndarray]:
    """A message's arrays with `event` (the event numbers within the spill) added."""
    arrays = dict(msg.arrays)
    if "event" not in arrays:
        arrays["event"] = np.arange(msg.first, msg.first + msg.count, dtype=np.uint32)
    return arrays


def blocks(path: str | Path, kind: FileKind, *, spills: tuple[int, int] | None = None,
           trigger_config: Any = None, refused: dict[str, int] | None = None
           ) -> Iterator[Block]:
    """The events of a file of `kind`, slice by slice, in file order (`spills=(a, b)`:
    spills a..b only). Raw and built files go through the event builder and the trigger
    (`trigger_config` instead of the recorded one, as in `analyze`); slices the trigger
    refuses are counted in `refused`."""
    if kind in (FileKind.RAW, FileKind.BUILT):
        from trigger.analyze import iter_processed  # the trigger's features of every event

        for msg, res in iter_processed(path, trigger_config, spills=spills, refused=refused):
            if res is not None and msg.count:
                f = res.features
                arrays = {**_numbered(msg), **f.arrays}
                yield Block(msg.run, msg.spill, msg.first, msg.count, arrays, dict(f.meta))
        return
    wanted = {FileKind.RECORDED: Kind.ACCEPTED, FileKind.FEATURES: Kind.FEATURES,
              FileKind.TRUTH: Kind.SLICE}.get(kind)
    if wanted is None:
        return
    for msg in RunFileReader(path).messages(spills):
        if msg.kind is wanted and msg.count:
            yield Block(msg.run, msg.spill, msg.first, msg.count, _numbered(msg),
                        dict(msg.meta))
