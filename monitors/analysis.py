"""Offline summary of a features stream: the object `na64daq analyze FILE --json` prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from daq.geometry import BOARD_NAMES
from daq.wire import Message
from monitors.aggregate import MonitorInputError, RunAnalysis
from monitors.config import MonitorConfig


def analyze(messages: Iterable[Message], config: MonitorConfig | None = None, *,
            boards: Sequence[str] = BOARD_NAMES, keep_spectra: bool = False) -> RunAnalysis:
    """Feed every message to a RunAnalysis and finish it; refused messages are counted
    in `refused` (by reason), never fatal. The source is `replay` if the stream says so."""
    cfg = config or MonitorConfig()
    ra: RunAnalysis | None = None
    for msg in messages:
        if ra is None:
            ra = RunAnalysis(cfg, boards=boards, source="replay" if msg.replay else "live",
                             keep_spectra=keep_spectra)
        try:
            ra.feed(msg)
        except MonitorInputError:
            continue  # counted by RunAnalysis.feed
    if ra is None:
        ra = RunAnalysis(cfg, boards=boards, keep_spectra=keep_spectra)
    ra.finish()
    return ra


def summarize(messages: Iterable[Message], config: MonitorConfig | None = None) -> dict:
    """`{"run": ..., "source": ..., "spills": [...], "totals": {...}}` (docs/monitors.md)."""
    return analyze(messages, config).report()
