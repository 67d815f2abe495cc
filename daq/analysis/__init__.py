"""Offline analysis of run files: their events in Python, re-analysis, export and plots.

    from daq.analysis import open_run
    run = open_run("runs/run000001.na64")
    df = run.to_pandas()            # one row per event, flat columns
    ev = run.events()               # awkward: jagged hits per board

docs/analysis.md walks through it.
"""

from daq.analysis.errors import AnalysisError, MissingExtra, NothingToAnalyze
from daq.analysis.events import BoardData, Events, Run, open_run
from daq.analysis.source import FileInfo, FileKind, probe

__all__ = ["AnalysisError", "BoardData", "Events", "FileInfo", "FileKind", "MissingExtra",
           "NothingToAnalyze", "Run", "open_run", "probe"]
