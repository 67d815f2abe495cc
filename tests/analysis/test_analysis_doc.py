"""docs/analysis.md's quoted field list and export column count are what the code gives
for a recorded feature-mode file: the walk-through a physicist follows cannot drift from
the columns they will get (it had, twice)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from analysis_files import RunFiles

from daq.analysis import open_run
from daq.analysis.export import export

pytestmark = pytest.mark.slow  # the session's files take a standing run (~4 s)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text()


def test_the_documented_fields_are_an_events_fields(run_files: RunFiles) -> None:
    m = re.search(r">>> len\(ev\), ev\.fields\n\((\d[\d,]*), (\[.*?\])\)", DOC)
    assert m is not None, "docs/analysis.md no longer shows `len(ev), ev.fields`"
    documented = ast.literal_eval(m.group(2))
    ev = open_run(run_files.recorded).events(spill=open_run(run_files.recorded).spills[0])
    assert list(ev.fields) == documented


@pytest.mark.parametrize("fmt", ["parquet", "root", "hdf5"])
def test_the_documented_export_columns_are_an_exports(run_files: RunFiles, fmt: str,
                                                      tmp_path: Path) -> None:
    m = re.search(rf"to demo\.{fmt} \({fmt}, [\d,]+ bytes, (\d+) columns\)", DOC)
    assert m is not None, f"docs/analysis.md no longer shows the {fmt} export line"
    res = export(run_files.recorded, fmt, tmp_path / f"out.{fmt}")
    assert len(res.columns) == int(m.group(1))
