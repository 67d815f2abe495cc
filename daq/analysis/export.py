"""`na64daq export`: the events of a run file as Parquet (pyarrow), ROOT (uproot) or HDF5
(h5py), written spill by spill so that memory holds one spill at a time.

One layout for the three formats (docs/analysis.md, "Export"): one row per event with the
per-event columns of `open_run` (`run`, `spill`, `event`, `ts`, the features or the truth;
2-D ones such as `e_hcal` as fixed-size arrays), and per board B:

- a zero-suppressed board: `B_nhit` and the per-hit fields `B_ch`, `B_amp`, `B_t`, `B_np`
  (feature mode) or `B_wave` (samples per hit, waveform mode);
- a full-waveform board: `B_wave` (samples x channels per event).

Parquet: list columns per event (`B_ch: list<uint8>`, `B_wave: list<fixed_size_list>`),
one row group per spill. ROOT: a TTree `events` whose jagged branches `B_ch`, `B_amp`, ...
share the counter `B_nhit` (int32 in ROOT); per-hit waveforms are the branch `B_wave` of the hits'
samples in order, with its own counter `nB_wave` = samples x `nB` (uproot 5.7 cannot read
back a jagged branch of fixed-size arrays it wrote: scikit-hep/uproot5#1490). HDF5:
`/events/<column>` per event, the hits of each board in `/hits/B/<field>` (event i's hits
are rows o[i]:o[i+1], o the running sum of `/events/B_nhit`), `/spills` (spill, first row,
rows). Every format carries the same metadata (run, kind, mode, source file, the run's
configuration and each spill's trigger configuration) as JSON: Parquet schema metadata
`na64`, a ROOT TObjString `na64`, HDF5 root attribute `na64`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from daq.analysis.errors import AnalysisError, NothingToAnalyze, need
from daq.analysis.events import BoardData, Events, Run, open_run
from daq.hits import offsets

FORMATS = ("parquet", "root", "hdf5")
Progress = Callable[[int, int], None]  # (spills done, spills)


@dataclass
class ExportResult:
    """What an export wrote."""

    path: Path
    format: str
    events: int = 0
    spills: list[int] = field(default_factory=list)  # spills with events, in order
    columns: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


class _Writer(Protocol):
    def write(self, ev: Events) -> None: ...
    def close(self) -> list[str]: ...


def flat_board(name: str, d: BoardData) -> dict[str, np.ndarray]:
    """One board's data under the export's column names (`B_nhit`, `B_<field>`)."""
    if d.layout == "wave":
        return {f"{name}_wave": d.wave}
    assert d.nhit is not None
    return {f"{name}_nhit": d.nhit, **{f"{name}_{k}": v for k, v in d.fields.items()}}


def metadata(run: Run) -> dict[str, Any]:
    """What every export carries besides the events."""
    return {"format": "na64-daq events 1", "run": run.number, "kind": str(run.kind),
            "mode": run.mode, "replay": run.replay, "source": run.path.name,
            "spills": list(run.spills), "config": run.config,
            "trigger_configs": {str(k): v for k, v in run.trigger_configs().items()}}


# --- Parquet ------------------------------------------------------------------------------


class _Parquet:
    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.pa: Any = need("pyarrow", "export", "export to Parquet")
        self.pq: Any = need("pyarrow.parquet", "export", "export to Parquet")
        self.out, self.meta = out, meta
        self.writer: Any = None

    def _fixed(self, a: np.ndarray) -> Any:
        arr = self.pa.array(np.ascontiguousarray(a).reshape(-1))
        for size in reversed(a.shape[1:]):
            arr = self.pa.FixedSizeListArray.from_arrays(arr, size)
        return arr

    def table(self, ev: Events) -> Any:
        cols = {n: self._fixed(a) for n, a in ev.columns.items()}
        for name, d in ev.boards.items():
            if d.layout == "wave":
                cols[f"{name}_wave"] = self._fixed(d.wave)
                continue
            assert d.nhit is not None
            offs = self.pa.array(offsets(d.nhit).astype(np.int32))
            cols[f"{name}_nhit"] = self.pa.array(d.nhit)
            for k, v in d.fields.items():
                cols[f"{name}_{k}"] = self.pa.ListArray.from_arrays(offs, self._fixed(v))
        return self.pa.table(cols)

    def write(self, ev: Events) -> None:
        t = self.table(ev)
        if self.writer is None:
            schema = t.schema.with_metadata({"na64": json.dumps(self.meta)})
            self.writer = self.pq.ParquetWriter(self.out, schema)
        self.writer.write_table(t.cast(self.writer.schema))

    def close(self) -> list[str]:
        names = list(self.writer.schema.names) if self.writer is not None else []
        if self.writer is not None:
            self.writer.close()
        return names


# --- ROOT ---------------------------------------------------------------------------------


class _Root:
    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.uproot: Any = need("uproot", "export", "export to ROOT")
        self.ak: Any = need("awkward", "export", "export to ROOT")
        self.file = self.uproot.recreate(out)
        self.meta = meta
        self.tree: Any = None
        self.names: list[str] = []

    def branches(self, ev: Events) -> dict[str, Any]:
        ak = self.ak
        data: dict[str, Any] = dict(ev.columns)
        for name, d in ev.boards.items():
            if d.layout == "wave":
                data[f"{name}_wave"] = d.wave
                continue
            assert d.nhit is not None
            counts = d.nhit.astype(np.int64)
            per_hit = {k: v for k, v in d.fields.items() if v.ndim == 1}
            data[name] = ak.unflatten(ak.zip(per_hit, depth_limit=1), counts)
            wave = d.fields.get("wave")
            if wave is not None:  # samples of each hit, in order (module docstring)
                data[f"{name}_wave"] = ak.unflatten(wave.reshape(-1), counts * wave.shape[1])
        return data

    def write(self, ev: Events) -> None:
        data = self.branches(ev)
        if self.tree is None:
            self.tree = self.file.mktree("events", data, title=f"na64-daq run {self.meta['run']}",
                                         counter_name=_counter)
            self.names = _branch_names(data)
        else:
            self.tree.extend(data)

    def close(self) -> list[str]:
        self.file["na64"] = json.dumps(self.meta)
        self.file.close()
        return self.names


# --- HDF5 ---------------------------------------------------------------------------------


class _Hdf5:
    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.h5py: Any = need("h5py", "export", "export to HDF5")
        self.f = self.h5py.File(out, "w")
        self.f.attrs["na64"] = json.dumps(meta)
        self.rows = 0
        self.spills: list[tuple[int, int, int]] = []
        self.names: list[str] = []

    def _append(self, group: str, name: str, a: np.ndarray) -> None:
        path = f"{group}/{name}"
        ds = self.f.get(path)
        if ds is None:
            ds = self.f.create_dataset(path, shape=(0, *a.shape[1:]), dtype=a.dtype,
                                       maxshape=(None, *a.shape[1:]), chunks=True,
                                       compression="gzip", compression_opts=1)
            self.names.append(path)
        n = ds.shape[0]
        ds.resize(n + len(a), axis=0)
        ds[n:] = a

    def write(self, ev: Events) -> None:
        for name, a in ev.columns.items():
            self._append("events", name, a)
        for name, d in ev.boards.items():
            if d.layout == "wave":
                self._append("events", f"{name}_wave", d.wave)
                continue
            assert d.nhit is not None
            self._append("events", f"{name}_nhit", d.nhit)
            for k, v in d.fields.items():
                self._append(f"hits/{name}", k, v)
        spill = int(ev.columns["spill"][0])
        self.spills.append((spill, self.rows, len(ev)))
        self.rows += len(ev)

    def close(self) -> list[str]:
        table = np.array(self.spills, dtype=[("spill", "<i8"), ("first", "<i8"), ("rows", "<i8")])
        self.f.create_dataset("spills", data=table)
        self.f.close()
        return self.names


def _branch_names(data: dict[str, Any]) -> list[str]:
    """The branches uproot makes of `data`: a record's fields as B_<field>, and counters."""
    names = []
    for name, a in data.items():
        fields = getattr(a, "fields", [])
        if fields:
            names += [_counter(name), *(f"{name}_{f}" for f in fields)]
        elif "var" in str(getattr(a, "type", "")):
            names += [_counter(name), name]
        else:
            names.append(name)
    return names


def _counter(counted: str) -> str:
    """ROOT counter branch of a jagged branch: `B_nhit` for a board's hits (the name of
    the other formats), `nB_wave` for the samples of its per-hit waveforms."""
    return f"n{counted}" if counted.endswith("_wave") else f"{counted}_nhit"


_WRITERS: dict[str, type] = {"parquet": _Parquet, "root": _Root, "hdf5": _Hdf5}


def export(path: str | Path, fmt: str, out: str | Path, *, trigger_config: Any = None,
           progress: Progress | None = None) -> ExportResult:
    """Write the events of the run file `path` to `out` in `fmt` (parquet, root, hdf5);
    NothingToAnalyze when the file has no events."""
    if fmt not in FORMATS:
        raise AnalysisError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    run = open_run(path, trigger_config=trigger_config)
    out = Path(out)
    res = ExportResult(out, fmt)
    writer: _Writer | None = None
    boards: dict[str, BoardData] = {}
    try:
        for i, (spill, ev) in enumerate(run.iter_spills()):
            if len(ev):
                boards = boards or {k: d for k, d in ev.boards.items()}
                _same_boards(ev, boards, spill)
                if writer is None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    writer = _WRITERS[fmt](out, metadata(run))
                writer.write(ev)
                res.events += len(ev)
                res.spills.append(spill)
            if progress is not None:
                progress(i + 1, len(run.spills))
    finally:
        if writer is not None:
            res.columns = writer.close()
    if writer is None:
        raise NothingToAnalyze(str(path), str(run.kind), "it holds no event to export"
                               + (f" (the trigger refused {run.refused})" if run.refused else ""))
    return res


def _same_boards(ev: Events, boards: dict[str, BoardData], spill: int) -> None:
    """Every spill in the layout of the first: a board missing from a whole spill reads
    nothing there; a board that appears only later cannot be added to the columns."""
    extra = set(ev.boards) - set(boards)
    if extra:
        raise AnalysisError(f"spill {spill} has data of {sorted(extra)}, which the first "
                            "spill with events had not: the export's columns are fixed by it")
    for name, d in boards.items():
        if name not in ev.boards:
            from daq.analysis.events import _empty_like

            ev.boards[name] = _empty_like(d, len(ev))
    ev.boards = {name: ev.boards[name] for name in boards}
