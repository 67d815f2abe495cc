"""The exceptions of offline analysis.

    DaqError (daq.errors)
    └── AnalysisError           a run file cannot be analysed, exported or plotted as asked
        ├── NothingToAnalyze    the file holds no events to analyse (path, kind, reason)
        └── MissingExtra        an optional library is not installed (package, extra)
"""

from __future__ import annotations

from typing import Any

from daq.errors import DaqError


class AnalysisError(DaqError):
    """A run file cannot be analysed, exported or plotted as asked."""


class NothingToAnalyze(AnalysisError):
    """The file holds no events: `kind` is what it is, `reason` says what it lacks."""

    def __init__(self, path: str, kind: str, reason: str) -> None:
        super().__init__(f"{path}: nothing to analyze: {reason}")
        self.path = path
        self.kind = kind
        self.reason = reason


class MissingExtra(AnalysisError):
    """An optional library is missing; `extra` is the pip extra that installs it."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        super().__init__(f"{what} needs {package}: pip install 'na64-daq[{extra}]'")
        self.package = package
        self.extra = extra


def need(module: str, extra: str, what: str) -> Any:
    """Import an optional module or raise MissingExtra naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(module.partition(".")[0], extra, what) from None
