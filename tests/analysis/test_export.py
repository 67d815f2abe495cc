"""`na64daq export` to Parquet, ROOT and HDF5 for every kind of run file, read back with
pyarrow, uproot and h5py and compared column by column with the run file's events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from analysis_files import RunFiles

from daq.analysis import Events, open_run
from daq.cli import main

pytestmark = pytest.mark.slow  # the session's files take a standing run (~5 s)
KINDS = ["raw", "raw_wave", "recorded", "recorded_wave", "replay", "truth"]


def _reference(ev: Events) -> dict[str, np.ndarray]:
    """The export's columns as open_run gives them (per-hit fields over all events)."""
    out = dict(ev.columns)
    for b, d in ev.boards.items():
        if d.layout == "wave":
            out[f"{b}_wave"] = d.wave
        else:
            out[f"{b}_nhit"] = d.nhit
            out.update({f"{b}_{k}": v for k, v in d.fields.items()})
    return out


def _arrow(col: Any) -> np.ndarray:
    arr, shape = col.combine_chunks(), []
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if pa.types.is_fixed_size_list(arr.type):
            shape.append(arr.type.list_size)
        arr = arr.flatten()
    a = arr.to_numpy(zero_copy_only=False)
    return a.reshape(-1, *shape) if shape else a


def _parquet(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"na64"])
    return ({n: _arrow(table.column(n)) for n in table.column_names}, meta,
            pq.ParquetFile(path).num_row_groups)


def _root(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    with uproot.open(path) as f:
        tree = f["events"]
        arrays = tree.arrays()
        meta = json.loads(str(f["na64"]))
        baskets = tree["event"].num_baskets
    out = {}
    for n in arrays.fields:
        a = arrays[n]
        out[n] = ak.to_numpy(ak.flatten(a)) if a.ndim > 1 and "var" in str(a.type) \
            else ak.to_numpy(a)
    return out, meta, baskets


def _hdf5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    with h5py.File(path, "r") as f:
        out = {n: f["events"][n][()] for n in f["events"]}
        for board in f.get("hits", {}):
            out.update({f"{board}_{k}": f["hits"][board][k][()] for k in f["hits"][board]})
        return out, json.loads(f.attrs["na64"]), len(f["spills"][()])


READ = {"parquet": _parquet, "root": _root, "hdf5": _hdf5}


@pytest.mark.parametrize("fmt", ["parquet", "root", "hdf5"])
@pytest.mark.parametrize("which", KINDS)
def test_every_export_reads_back_column_by_column(
        run_files: RunFiles, which: str, fmt: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = getattr(run_files, which)
    run = open_run(src)
    ref = _reference(run.arrays())
    out = tmp_path / f"{which}.{fmt}"
    assert main(["export", str(src), "--format", fmt, "--out", str(out), "--no-progress"]) == 0
    assert f"exported {len(ref['event']):,} events of spills 0-1" in capsys.readouterr().out
    got, meta, parts = READ[fmt](out)
    assert set(got) == set(ref) | ({f"n{k}" for k in ref if k.endswith("_wave")
                                    and ref[k].ndim == 2} if fmt == "root" else set())
    for name, want in ref.items():
        have = got[name]
        if fmt == "root" and name.endswith("_wave") and want.ndim == 2:
            have = have.reshape(want.shape)  # per-hit samples, flat in ROOT (see export.py)
        assert have.shape == want.shape, name
        np.testing.assert_array_equal(have, want, err_msg=name)
        # ROOT counters are int32 (B_nhit); every other column keeps its dtype
        if not (fmt == "root" and name.endswith("_nhit")):
            assert have.dtype == want.dtype, name
    assert meta["run"] == run.number and meta["kind"] == str(run.kind)
    assert meta["spills"] == [0, 1] and meta["replay"] is run.replay
    assert parts == 2  # one row group / basket / spills row per spill


def test_export_of_a_file_without_events_is_an_error(
        run_files: RunFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from daq.runfile import RunFileReader, RunFileWriter
    from daq.wire import Kind, Message

    none = tmp_path / "none.na64"
    with RunFileWriter(none, run=1, config={}, geometry_hash="g", calibration_hash="c") as w:
        for m in RunFileReader(run_files.recorded):
            if m.kind is Kind.ACCEPTED:
                m = Message(m.kind, m.run, m.spill, m.seq, m.src, m.board, m.first, 0,
                            {k: v[:0] for k, v in m.arrays.items()}, m.meta, m.replay)
            w.write(m)
    assert main(["export", str(none), "--format", "hdf5", "--out", str(tmp_path / "x.h5"),
                 "--no-progress"]) == 2
    assert "nothing to analyze: it holds no event to export" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
