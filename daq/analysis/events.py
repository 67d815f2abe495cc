"""Events of a run file in Python: `open_run(path)` and its spills as numpy, awkward, pandas.

    from daq.analysis import open_run
    run = open_run("runs/run000001.na64")
    run.spills, run.kind, run.config          # read from the header and the index
    ev = run.events()                         # awkward: ev.e_ecal, ev.ECAL.amp (jagged) ...
    df = run.to_pandas(spill=0)               # one row per event, flat columns

Nothing is read until asked, and then one spill at a time (a closed file is indexed by
spill): `run.events(spill=s)` reads spill s only, `run.iter_spills()` yields them in turn.
What the events are depends on the file (daq.analysis.source): a recorded file gives its
accepted events as recorded; a raw file gives every event, built and run through the
trigger now, with the recorded configuration (or `trigger_config`).

Columns, one value per event: `run`, `spill`, `event` (number within the spill), `ts`, and
the features (`e_ecal`, `e_ps`, `e_hcal` (4 modules), `e_veto`, `e_srd`, `mult`, `sat`,
`missing`, `cond`, `bits`, `shadow`; docs/dataflow.md), or in a truth file the truth
(`species`, `process`, `e_true`, ...). Board data, per board B: zero-suppressed boards as
hits (`nhit` per event; `ch`, and `amp`, `t`, `np` in feature mode or `wave` (samples) in
waveform mode, per hit), full-waveform boards as `wave` (samples x channels per event).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq.analysis.errors import need
from daq.analysis.source import Block, FileInfo, FileKind, blocks, probe
from daq.geometry import BOARD_NAMES
from daq.markers import stamped_config
from daq.runfile import RunFileReader

#: sub-column names of the 2-D columns, for flat tables (pandas, Parquet, HDF5 ...)
SUBCOLUMNS: dict[str, tuple[str, ...]] = {"e_hcal": ("1", "2", "3", "4"),
                                          "pileup": tuple(f"_{b}" for b in BOARD_NAMES),
                                          "halo_dt": ("_before", "_after")}


@dataclass
class BoardData:
    """One board's data for a set of events: `hits` layout (nhit + per-hit fields) or
    `wave` layout (full waveforms, (events, samples, channels))."""

    layout: str  # "hits" or "wave"
    nhit: np.ndarray | None = None  # uint8 (events,) in the hits layout
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # hits: ch, amp, t, np, wave

    @property
    def wave(self) -> np.ndarray:
        return self.fields["wave"]


def _board_data(arrays: dict[str, np.ndarray], board: str) -> BoardData:
    pre = board + "."
    if pre + "wave" in arrays:
        return BoardData("wave", fields={"wave": arrays[pre + "wave"]})
    fields = {n[len(pre) + 4:]: a for n, a in arrays.items()
              if n.startswith(pre + "hit_")}
    return BoardData("hits", arrays[pre + "nhit"], fields)


def _empty_like(d: BoardData, count: int) -> BoardData:
    """The same layout with no data for `count` events (a board missing from a slice)."""
    if d.layout == "wave":
        w = d.wave
        return BoardData("wave", fields={"wave": np.zeros((count, *w.shape[1:]), w.dtype)})
    return BoardData("hits", np.zeros(count, np.uint8),
                     {k: v[:0] for k, v in d.fields.items()})


@dataclass
class Events:
    """Events of one spill or more, in (spill, event) order: per-event `columns` and
    per-board `boards`."""

    columns: dict[str, np.ndarray]
    boards: dict[str, BoardData]

    def __len__(self) -> int:
        return len(self.columns["event"]) if "event" in self.columns else 0

    @classmethod
    def from_blocks(cls, blks: Sequence[Block], template: Events | None = None) -> Events:
        """Concatenate blocks; a board absent from a block reads nothing there (its
        `missing` bits say so); `template` gives the columns and boards of an empty set."""
        if not blks:
            return template.empty() if template is not None else cls({}, {})
        # (spill, event) order: trigger workers in parallel interleave slices, and spills
        blks = sorted(blks, key=lambda b: (b.spill, b.first))
        names = [n for n in blks[0].arrays if "." not in n]
        cols: dict[str, np.ndarray] = {
            "run": np.concatenate([np.full(b.count, b.run, np.int64) for b in blks]),
            "spill": np.concatenate([np.full(b.count, b.spill, np.int64) for b in blks])}
        cols["event"] = np.concatenate([b.arrays["event"] for b in blks])
        for n in names:
            if n not in cols:
                cols[n] = np.concatenate([b.arrays[n] for b in blks])
        seen = {name: _board_data(b.arrays, name) for b in reversed(blks) for name in b.boards()}
        order = [b for b in BOARD_NAMES if b in seen] + sorted(set(seen) - set(BOARD_NAMES))
        boards = {}
        for name in order:
            parts = [_board_data(b.arrays, name) if name in b.boards()
                     else _empty_like(seen[name], b.count) for b in blks]
            boards[name] = _concat(parts)
        return cls(cols, boards)

    def empty(self) -> Events:
        return Events({k: v[:0] for k, v in self.columns.items()},
                      {k: _empty_like(d, 0) for k, d in self.boards.items()})

    # --- views ---------------------------------------------------------------------------

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The per-event columns (2-D ones such as e_hcal kept 2-D), no board data."""
        return dict(self.columns)

    def flat_columns(self) -> dict[str, np.ndarray]:
        """The per-event columns with 2-D ones split (e_hcal -> e_hcal1 .. e_hcal4)."""
        out: dict[str, np.ndarray] = {}
        for name, a in self.columns.items():
            if a.ndim == 1:
                out[name] = a
                continue
            subs = SUBCOLUMNS.get(name, ())
            for j in range(a.shape[1]):
                out[name + (subs[j] if j < len(subs) else f"_{j}")] = a[:, j]
        return out

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per event, of the flat columns (board data are
        jagged: take them from `to_awkward`)."""
        pd: Any = need("pandas", "analysis", "events as a pandas DataFrame")
        return pd.DataFrame(self.flat_columns())

    def to_awkward(self) -> Any:
        """An awkward Array of records: the columns, and per board a field `B`: a jagged
        list of hits {ch, amp, t, np} or {ch, wave}, or {wave} for full waveforms."""
        ak: Any = need("awkward", "analysis", "events as awkward arrays")
        fields: dict[str, Any] = {n: ak.from_numpy(a) for n, a in self.columns.items()}
        for name, d in self.boards.items():
            rec = ak.zip({k: ak.from_numpy(v) for k, v in d.fields.items()}, depth_limit=1)
            if d.nhit is None:  # full waveforms: one record per event
                fields[name] = rec
            else:
                fields[name] = ak.unflatten(rec, d.nhit.astype(np.int64))
        return ak.zip(fields, depth_limit=1)


def _concat(parts: list[BoardData]) -> BoardData:
    first = parts[0]
    if len(parts) == 1:
        return first
    fields = {k: np.concatenate([p.fields[k] for p in parts]) for k in first.fields}
    if first.layout == "wave":
        return BoardData("wave", fields=fields)
    return BoardData("hits", np.concatenate([p.nhit for p in parts if p.nhit is not None]),
                     fields)


class Run:
    """A run file opened for analysis (see the module docstring)."""

    def __init__(self, path: str | Path, *, trigger_config: Any = None) -> None:
        self.info: FileInfo = probe(path)
        self.path = self.info.path
        self.trigger_config = trigger_config
        #: slices the trigger refused while building events of a raw file, by reason
        self.refused: dict[str, int] = {}
        self._template: Events | None = None

    def __repr__(self) -> str:
        return (f"<Run {self.number} {self.kind} file {self.path.name}: spills "
                f"{list(self.spills)}{', replay' if self.replay else ''}>")

    @property
    def kind(self) -> FileKind:
        return self.info.kind

    @property
    def number(self) -> int:
        """The run number."""
        return self.info.run

    @property
    def replay(self) -> bool:
        return self.info.replay

    @property
    def mode(self) -> str | None:
        """Readout mode, `feature` or `waveform`."""
        return self.info.mode

    @property
    def spills(self) -> tuple[int, ...]:
        return self.info.spills

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration snapshot (file header)."""
        return self.info.config

    def trigger_configs(self) -> dict[int, dict[str, Any]]:
        """Spill -> the trigger configuration its events were decided with, as the stream
        recorded it ({} for a raw file: boards carry none; the builder stamps its own)."""
        if self.kind in (FileKind.RAW, FileKind.TRUTH, FileKind.EMPTY):
            return {}
        out: dict[int, dict[str, Any]] = {}
        for m in RunFileReader(self.path):
            tc = stamped_config(m)[1]
            if tc is not None:
                out.setdefault(m.spill, tc)
        return out

    def _blocks(self, spill: int | None) -> Iterator[Block]:
        rng = None if spill is None else (spill, spill)
        yield from blocks(self.path, self.kind, spills=rng, trigger_config=self.trigger_config,
                          refused=self.refused)

    def _events(self, spill: int | None) -> Events:
        if spill is not None and spill not in self.spills:
            from daq.analysis.errors import AnalysisError

            raise AnalysisError(f"{self.path}: no spill {spill} (spills {list(self.spills)})")
        ev = Events.from_blocks([b for b in self._blocks(spill)
                                 if spill is None or b.spill == spill], self._template)
        if len(ev) and self._template is None:
            self._template = ev.empty()
        return ev

    def arrays(self, spill: int | None = None) -> Events:
        """Events of one spill (None: the whole run) with their board data."""
        return self._events(spill)

    def iter_spills(self) -> Iterator[tuple[int, Events]]:
        """(spill, its events), one spill read at a time."""
        for s in self.spills:
            yield s, self._events(s)

    def events(self, spill: int | None = None) -> Any:
        """awkward Array of the events of one spill or of the run (Events.to_awkward)."""
        return self._events(spill).to_awkward()

    def to_numpy(self, spill: int | None = None) -> dict[str, np.ndarray]:
        """Per-event columns as numpy arrays (Events.to_numpy)."""
        return self._events(spill).to_numpy()

    def to_pandas(self, spill: int | None = None) -> Any:
        """A pandas DataFrame, one row per event (Events.to_pandas)."""
        return self._events(spill).to_pandas()


def open_run(path: str | Path, *, trigger_config: Any = None) -> Run:
    """Open a run file of any kind for analysis; nothing but its header and first records
    is read until events are asked for. `trigger_config` (a TriggerConfig): for raw files,
    decide with it instead of the recorded configuration."""
    return Run(path, trigger_config=trigger_config)
