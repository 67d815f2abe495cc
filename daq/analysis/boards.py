"""Recorded events back into board streams, so that a recorded file can be replayed into an
event builder like a raw one.

A recorded file (the recorder's) holds the accepted events of each built slice with every
board's arrays as the board sent them (`B.nhit`, `B.hit_*` or `B.wave`) and the trigger's
`ts`: enough to send them again as each board's stream. What changes, and why:

- events are numbered again from 0 in each spill, in their recorded order (the events the
  trigger rejected are not in the file; a board slice covers consecutive events);
- one board slice per accepted message with events (slices of 0 events are left out);
- a board absent from a recorded slice (it was missing for all its events) sends no
  fragment for it, so the builder flags it missing again; a board missing for only some
  events of a slice was padded by the builder (no hits, or the pedestal) and is sent so;
- the markers are the boards': `run_start`, `spill_start` (with the recorded `t0_ns`),
  `spill_end` (the events sent; BEAM keeps the recorded scalers of the beam), `run_stop`,
  `eos`; recorded `config` markers are left out: the receiving system decides with its own
  trigger configuration (`analyze --trigger-config` re-runs a recorded one offline).

Spills are emitted whole, in spill order, once their `spill_end` has been read (trigger
workers in parallel interleave the records of consecutive spills in the file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from daq.analysis.errors import AnalysisError
from daq.markers import RunStart, RunStop, SliceMeta, SpillEnd, SpillStart, mode_of
from daq.wire import Kind, Message


@dataclass
class _Spill:
    start: Message | None = None
    data: list[Message] = field(default_factory=list)
    end: Message | None = None


class BoardStreams:
    """Turns the messages of a recorded (or built) file into per-board stream messages."""

    def __init__(self, boards: Sequence[str]) -> None:
        self.boards = tuple(boards)
        self.seq = dict.fromkeys(self.boards, 0)
        self.spills: dict[int, _Spill] = {}
        self.start = RunStart()  # what the boards' run_starts carry
        self.events = 0

    def _msg(self, board: str, kind: Kind, src: Message, **kw: Any) -> Message:
        m = Message(kind, run=src.run, spill=kw.pop("spill", src.spill), seq=self.seq[board],
                    src=board, board=board, replay=src.replay, **kw)
        self.seq[board] += 1
        return m

    def feed(self, m: Message) -> Iterator[Message]:
        if m.kind is Kind.RUN_START:
            r = RunStart.of(m)
            self.start = RunStart(config=r.config, geometry=r.geometry,
                                  calibration=r.calibration, mode=r.mode)
            for b in self.boards:
                yield self._msg(b, Kind.RUN_START, m, spill=0, meta=self.start.to_meta())
        elif m.kind is Kind.SPILL_START:
            sp = self.spills.setdefault(m.spill, _Spill())
            sp.start = sp.start or m
        elif m.kind in (Kind.ACCEPTED, Kind.SLICE) and m.board == "ALL":
            if m.count:
                self.spills.setdefault(m.spill, _Spill()).data.append(m)
        elif m.kind is Kind.SPILL_END:
            sp = self.spills.setdefault(m.spill, _Spill())
            sp.end = sp.end or m
            for s in sorted(s for s, x in self.spills.items() if s <= m.spill and x.end):
                yield from self._spill(s, self.spills.pop(s))
        elif m.kind is Kind.RUN_STOP:
            yield from self.flush()
            stop = RunStop(RunStop.of(m).reason)
            for b in self.boards:
                yield self._msg(b, Kind.RUN_STOP, m, spill=m.spill, meta=stop.to_meta())

    def flush(self) -> Iterator[Message]:
        """Every spill still held (a file cut short: a spill without its end)."""
        for s in sorted(self.spills):
            yield from self._spill(s, self.spills.pop(s))

    def _spill(self, spill: int, sp: _Spill) -> Iterator[Message]:
        ref = sp.start or sp.end or (sp.data[0] if sp.data else None)
        if ref is None:
            return
        start = SpillStart(SpillStart.of(sp.start).t0_ns if sp.start else 0)
        for b in self.boards:
            yield self._msg(b, Kind.SPILL_START, ref, spill=spill, meta=start.to_meta())
        first = 0
        for m in sorted(sp.data, key=lambda x: x.first):
            meta = SliceMeta(mode=mode_of(m) or self.start.mode)
            for b in self.boards:
                arrays = {n[len(b) + 1:]: a for n, a in m.arrays.items() if n.startswith(b + ".")}
                if not arrays:
                    continue  # missing for the whole slice: the builder flags it again
                arrays = {"ts": m.arrays["ts"], **arrays}
                yield self._msg(b, Kind.SLICE, m, first=first, count=m.count, arrays=arrays,
                                meta=meta.to_meta())
            first += m.count
        self.events += first
        if sp.end is not None:
            scalers = SpillEnd.of(sp.end).scalers or {}
            for b in self.boards:
                end = SpillEnd(first, scalers=dict(scalers) if b == "BEAM" else {"events": first})
                yield self._msg(b, Kind.SPILL_END, sp.end, spill=spill, meta=end.to_meta())


def unconvertible(m: Message) -> str | None:
    """Why the events of a recorded or built message cannot become board streams."""
    if m.kind not in (Kind.ACCEPTED, Kind.SLICE) or not m.count:
        return None
    if not any("." in n for n in m.arrays):
        return f"{m.kind} records carry no board data"
    if "ts" not in m.arrays:
        return f"{m.kind} records carry no `ts`"
    return None


def board_streams(messages: Iterable[Message], boards: Sequence[str]) -> Iterator[Message]:
    """The board streams of a recorded or built file's messages (module docstring), ending
    with each board's `eos`. AnalysisError when its events carry no board data."""
    conv = BoardStreams(boards)
    last: Message | None = None
    for m in messages:
        why = unconvertible(m)
        if why:
            raise AnalysisError(why)
        last = m
        yield from conv.feed(m)
    yield from conv.flush()
    if last is not None:
        for b in boards:
            yield conv._msg(b, Kind.END_OF_STREAM, last, spill=last.spill)
