"""Service logging: every line with time, service, and (where known) run and spill.

    setup_logging("builder", fmt="json")   # once, at process start (`na64daq serve`)
    bind(service)                          # once the service object exists: run and spill
                                           # come from it at each record

Text lines read `2026-12-07T20:15:35.123Z INFO builder run=3 spill=12 na64.x: message`;
JSON lines are one object each: time, level, service, run, spill, logger, message (and
`exc` with a traceback). Under `na64daq up` they land in run_dir/logs/<service>.log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Literal

Format = Literal["text", "json"]
FORMATS: tuple[Format, ...] = ("text", "json")
Source = Callable[[], tuple[int | None, int | None]]


def _none() -> tuple[int | None, int | None]:
    return None, None


def service_source(svc: Any) -> Source:
    """(run, spill) of a daq.service.Service: the run its lifecycle has open, the spill
    it reports (`spill` attribute, where it has one), else the core's run (run control)."""
    def read() -> tuple[int | None, int | None]:
        run = getattr(getattr(svc, "lifecycle", None), "run", None)
        if run is None:  # run control: its core's state
            st = getattr(getattr(svc, "core", None), "state", None)
            rec = getattr(st, "run", None)
            phase = getattr(getattr(st, "state", None), "value", "")
            if rec is not None and phase in ("running", "paused"):
                run = rec.run
        spill = getattr(svc, "spill", None)
        return (run if isinstance(run, int) else None,
                spill if isinstance(spill, int) and run is not None else None)
    return read


class ContextFilter(logging.Filter):
    """Adds `service`, `run` and `spill` to every record passing the handler."""

    def __init__(self, service: str, source: Source = _none) -> None:
        super().__init__()
        self.service = service
        self.source = source

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            run, spill = self.source()
        except Exception:  # a log line must never fail on its context
            run, spill = None, None
        record.service, record.run, record.spill = self.service, run, spill
        return True


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created), "level": record.levelname,
            "service": getattr(record, "service", None), "run": getattr(record, "run", None),
            "spill": getattr(record, "spill", None), "logger": record.name,
            "message": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        where = " ".join(f"{k}={v}" for k in ("run", "spill")
                         if (v := getattr(record, k, None)) is not None)
        line = (f"{_iso(record.created)} {record.levelname} "
                f"{getattr(record, 'service', '-')}{' ' + where if where else ''} "
                f"{record.name}: {record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_filter: ContextFilter | None = None


def setup_logging(service: str, *, fmt: Format = "text", level: int = logging.INFO,
                  stream: IO[str] | None = None) -> logging.Handler:
    """Replace the root logger's handlers by one writing `fmt` lines to `stream` (stderr)."""
    global _filter
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {FORMATS}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _filter = ContextFilter(service)
    handler.addFilter(_filter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def bind(svc: Any) -> None:
    """Take run and spill from `svc` from now on (after `setup_logging`)."""
    if _filter is not None:
        _filter.source = service_source(svc)
