"""Summarise a run file per spill: events, slices, boards, incomplete events, bytes, state,
and the trigger configuration each spill was (or is to be) processed with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daq.analysis.source import kind_of
from daq.markers import AcceptedMeta, ConfigMarker, SpillEnd, stamped_config
from daq.runfile import RunFileReader
from daq.wire import Kind, Message


@dataclass
class SpillSummary:
    spill: int
    records: int = 0
    bytes: int = 0
    events: int = 0
    accepted: int = 0
    slices: int = 0
    boards: list[str] = field(default_factory=list)
    incomplete: int = 0
    ended: bool = False
    replay: bool = False
    #: content hash(es) of the trigger configuration of the spill, comma-separated; None
    #: in a raw file (boards carry none: the builder stamps its own when it builds them)
    trigger_cfg: str | None = None


@dataclass
class FileSummary:
    path: str
    run: int
    header: dict[str, Any]
    closed_cleanly: bool
    recovered: bool
    torn: bool
    reason: str
    bytes_dropped: int
    torn_spill: int | None
    records: int
    spills: list[SpillSummary]
    #: raw, built, recorded, features, truth or empty (daq.analysis.source)
    kind: str = "empty"
    #: every trigger configuration the file names: content hash -> the configuration
    trigger_configs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Acc:
    """Per-spill accumulation while scanning."""

    def __init__(self, spill: int) -> None:
        self.s = SpillSummary(spill)
        self.firsts: dict[int, set[str]] = {}
        self.counts: dict[int, int] = {}
        self.boards: set[str] = set()
        self.announced: int | None = None
        self.built_incomplete: int | None = None
        self.flagged = 0
        self.board_events: dict[str, int] = {}
        self.cfgs: dict[str, Any] = {}

    def add(self, m: Message, nbytes: int) -> None:
        s = self.s
        s.records += 1
        s.bytes += nbytes
        s.replay = s.replay or m.replay
        cfg, tc = stamped_config(m)
        if cfg is not None:
            self.cfgs.setdefault(cfg, tc)
        if m.kind in (Kind.SLICE, Kind.ACCEPTED):
            if m.board == "ALL":
                self.boards.update(n.split(".", 1)[0] for n in m.arrays if "." in n)
                miss = m.arrays.get("missing")
                if miss is not None:
                    self.flagged += int(np.count_nonzero(miss))
            else:
                self.boards.add(m.board)
            self.firsts.setdefault(m.first, set()).add(m.board)
            self.counts[m.first] = max(self.counts.get(m.first, 0), m.count)
            if m.kind is Kind.ACCEPTED:
                s.accepted += m.count
                self.counts[m.first] = AcceptedMeta.of(m).slice_count
        elif m.kind is Kind.SPILL_END:
            s.ended = True
            end = SpillEnd.of(m)
            if m.src == "builder" or end.slices is not None:
                self.announced = end.events
                # events - complete counts an event missing two boards once (the
                # per-board counts do not; files from before `complete` have only them)
                self.built_incomplete = (end.events - end.complete if end.complete is not None
                                         else sum((end.incomplete or {}).values()))
            else:
                self.board_events[m.board or m.src] = end.events

    def finish(self, all_boards: set[str], ended: bool | None) -> SpillSummary:
        """`all_boards`: every board seen in the file; `ended`: the reader's verdict."""
        s = self.s
        s.ended = s.ended if ended is None else ended
        s.slices = len(self.firsts)
        s.boards = sorted(self.boards)
        s.trigger_cfg = ",".join(sorted(self.cfgs)) or None
        if self.announced is not None:
            s.events = self.announced
        elif self.board_events:
            s.events = max(self.board_events.values())
        else:
            s.events = sum(self.counts.values())
        if self.built_incomplete is not None:
            s.incomplete = self.built_incomplete
        elif "ALL" in {b for f in self.firsts.values() for b in f}:
            s.incomplete = self.flagged
        else:  # raw fragments: an event is incomplete when a board lacks its slice
            s.incomplete = sum(self.counts[f] for f, b in self.firsts.items()
                               if b != all_boards)
        return s


def summarize(path: str | Path) -> FileSummary:
    """Read the whole file and summarise it (a torn file is summarised up to the tear)."""
    r = RunFileReader(path)
    accs: dict[int, _Acc] = {}
    kind = "empty"
    configs: dict[str, Any] = {}
    for m in r:
        if kind == "empty":
            kind = str(kind_of(m) or "empty")
        if m.kind is Kind.CONFIG:
            c = ConfigMarker.of(m)
            configs.setdefault(c.cfg, c.trigger_config)
        if m.kind in (Kind.RUN_START, Kind.RUN_STOP):
            continue
        accs.setdefault(m.spill, _Acc(m.spill)).add(m, 0)
    rep = r.report
    spills = []
    all_boards = set().union(*(a.boards for a in accs.values()))
    for s, acc in sorted(accs.items()):
        info = rep.spills.get(s)
        acc.s.records = info.records if info else acc.s.records
        acc.s.bytes = info.bytes if info else 0
        spills.append(acc.finish(all_boards, info.complete if info else None))
    header = {k: v for k, v in r.header.items() if k != "config"}
    for acc in accs.values():
        for h, c in acc.cfgs.items():
            if configs.get(h) is None:
                configs[h] = c
    return FileSummary(
        path=str(r.path), run=int(r.header.get("run", 0)), header=header,
        closed_cleanly=rep.closed_cleanly, recovered=not rep.closed_cleanly, torn=rep.torn,
        reason=rep.reason, bytes_dropped=rep.bytes_dropped, torn_spill=rep.torn_spill,
        records=rep.records, spills=spills, kind=kind,
        trigger_configs={h: configs[h] for h in sorted(configs)})


def format_text(fs: FileSummary) -> str:
    """A terminal table of the summary."""
    state = "closed cleanly" if fs.closed_cleanly else (
        f"RECOVERED ({fs.reason}; {fs.bytes_dropped} bytes dropped"
        + (f"; spill {fs.torn_spill} incomplete" if fs.torn_spill is not None else "") + ")")
    lines = [f"{fs.path}: {fs.kind} run file, run {fs.run}, {fs.records} records, {state}",
             f"{'spill':>6} {'events':>8} {'accepted':>8} {'slices':>6} {'incompl':>7} "
             f"{'bytes':>12}  ended  {'trigger cfg':<16}  boards"]
    for s in fs.spills:
        lines.append(f"{s.spill:>6} {s.events:>8} {s.accepted:>8} {s.slices:>6} "
                     f"{s.incomplete:>7} {s.bytes:>12}  {'yes' if s.ended else 'NO ':<5}  "
                     f"{s.trigger_cfg or '-':<16}  "
                     f"{','.join(s.boards)}{'  (replay)' if s.replay else ''}")
    if fs.trigger_configs:
        lines.append("trigger configurations:")
        lines += [f"  {h}: {_describe(c)}" for h, c in fs.trigger_configs.items()]
    elif fs.kind == "raw":
        lines.append("trigger configuration: none in a raw file (board streams carry none; "
                     "the builder stamps its own when the file is analysed or replayed)")
    return "\n".join(lines)


def _describe(c: dict[str, Any] | None) -> str:
    """One line of the settings that decide an event (the rest is in --json)."""
    if not c:
        return "(not in the file)"
    return (f"version {c.get('version')}, E_ECAL < {c.get('ecal_max_gev')} GeV, "
            f"E_PS >= {c.get('ps_min_gev')} GeV, prescales beam {c.get('prescale_beam')} "
            f"random {c.get('prescale_random')} calibration {c.get('prescale_calibration')}, "
            f"enabled {','.join(c.get('enabled') or [])}"
            + (f", {len(c['masked_channels'])} channel(s) masked"
               if c.get("masked_channels") else ""))
