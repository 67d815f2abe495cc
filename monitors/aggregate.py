"""RunAnalysis: feed it features messages and markers, get per-spill summaries and run totals.

Pure: no sockets, no clock. A spill closes when its builder `spill_end` has arrived and one
features message for each of the `slices` it announced (workers may reorder them), or is
forced closed when `max_open_spills` later spills have closed first (a message was lost)
or when the run is finished. Bad input raises MonitorInputError and is counted by reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from daq.errors import DaqError, WireError
from daq.geometry import BOARD_NAMES
from daq.markers import (
    CalibCells,
    FeaturesMeta,
    PreviousEnd,
    SpillEnd,
    SpillStart,
    previous_end,
)
from daq.wire import Kind, Message
from monitors import calibration
from monitors.alarms import judge_spills
from monitors.config import MonitorConfig
from monitors.identify import FEATURE_ARRAYS, TIMING_ARRAYS, TRACK_ARRAYS
from monitors.kernels import aggregate
from monitors.spectra import Spectra
from monitors.summary import (
    BEAM_BIT,
    CALIBRATION_BIT,
    Counts,
    RunTotals,
    SpillSummary,
    figures,
)

Source = Literal["live", "replay"]
_PASSIVE = frozenset({Kind.SPILL_START, Kind.RUN_START, Kind.RUN_STOP, Kind.CONFIG,
                      Kind.END_OF_STREAM})
#: spills whose trigger threshold is remembered until they close (spill_starts of spills
#: that never close, e.g. lost with a worker, do not pile up)
_MAX_THRESHOLDS = 64


class MonitorInputError(DaqError):
    """A message the monitors cannot use. `reason` is a short code used as a metric label."""

    REASONS = ("kind", "run", "arrays", "meta", "duplicate", "late")

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_features(msg: Message) -> Mapping[str, np.ndarray]:
    """The arrays of a features message, checked against docs/dataflow.md."""
    a = msg.arrays
    optional = {}
    for group in (TRACK_ARRAYS, TIMING_ARRAYS):  # each: both arrays or neither
        if any(k in a for k in group):
            optional.update(group)
    for name, (dtype, ndim) in {**FEATURE_ARRAYS, **optional}.items():
        arr = a.get(name)
        if arr is None:
            raise MonitorInputError("arrays", f"features of spill {msg.spill} lack {name!r}")
        if arr.dtype.str != dtype or arr.ndim != ndim or arr.shape[0] != msg.count:
            raise MonitorInputError(
                "arrays", f"{name!r} is {arr.dtype.str}{arr.shape}, expected {dtype} with "
                f"{ndim} dims and {msg.count} events")
    if a["e_hcal"].shape[1] < 1:
        raise MonitorInputError("arrays", "e_hcal has no modules")
    return a


def complete_counts(f: Mapping[str, np.ndarray], counts: Counts, cfg: MonitorConfig) -> None:
    """Add to a slice's `counts` (from the compiled pass) what it does not count: the
    beam-condition events among complete events (EOT: a board that stopped mid-spill makes
    the rest of the spill dead, not beam-less) and the calibration events' E_ECAL (the
    energy scale). With every event complete, as nearly always, one pass over `bits`."""
    calib = (f["bits"] & CALIBRATION_BIT) != 0
    if counts.incomplete == 0:
        counts.beam_cond_complete += counts.beam_cond
    else:
        complete = f["missing"] == 0
        counts.beam_cond_complete += int(np.count_nonzero(
            complete & ((f["cond"] & BEAM_BIT) != 0)))
        calib &= complete
    calibration.fill(counts.calib_hist, f["e_ecal"][calib], cfg.beam_energy_gev)


def _cell_sums(m: object) -> dict[str, float] | None:
    """{ECAL cell: finite non-negative number}, or None if `m` is not one."""
    if not isinstance(m, Mapping):
        return None
    out: dict[str, float] = {}
    for k, x in m.items():
        if (k not in calibration.ecal_cells() or isinstance(x, bool)
                or not isinstance(x, int | float) or not (math.isfinite(x) and x >= 0)):
            return None
        out[k] = float(x)
    return out


def calib_cells(v: CalibCells | None) -> tuple[int, dict[str, float], dict[str, float]] | None:
    """The features' `calib_cells` (trigger.processor.calib_cells; typed at decode: `n`
    events, `sum` and `sum2` maps) checked against the geometry: per ECAL cell, finite
    non-negative sums of its energy."""
    if v is None:
        return None
    total, total2 = _cell_sums(v.sum), _cell_sums(v.sum2)
    if v.n < 0 or total is None or total2 is None:
        raise MonitorInputError("meta", f"calib_cells {v!r} is not n events and per-cell "
                                "energy sums of ECAL cells")
    return v.n, total, total2


@dataclass
class _Open:
    counts: Counts
    spectra: Spectra
    slices_seen: int = 0
    slices: int | None = None
    scalers: dict[str, int] = field(default_factory=dict)
    shadow_ran: bool = False
    cfgs: set[str] = field(default_factory=set)  # trigger configuration hashes seen
    resumed: bool = False  # a restarted builder joined the spill: its `slices` is a part


class RunAnalysis:
    """The monitor figures of one run from one source (live or replay)."""

    def __init__(self, cfg: MonitorConfig, *, boards: Sequence[str] = BOARD_NAMES,
                 source: Source = "live", run: int | None = None,
                 keep_spectra: bool = True, keep_last: int | None = None) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be at least 1 (or None: keep all)")
        self.cfg = cfg
        #: a long-running service keeps only the last `keep_last` spill summaries and
        #: spectra (run totals keep counting every spill); None keeps all (analyze a file)
        self.keep_last = keep_last
        self.closed_spills = 0
        self.forced_spills = 0
        self.boards = tuple(boards)
        self.source: Source = source
        self.run = run
        self.keep_spectra = keep_spectra
        self.summaries: list[SpillSummary] = []
        self.spectra: dict[int, Spectra] = {}  # per closed spill, when keep_spectra
        self.run_spectra = Spectra.empty(cfg)
        self.totals_counts = Counts()
        self.refused: dict[str, int] = {}
        self.stream_gaps: dict[str, int] = {}
        self.restarted_streams: dict[str, int] = {}
        self.shadow_ran = False
        self._open: dict[int, _Open] = {}
        self._closed: set[int] = set()
        self._thresholds: dict[int, float] = {}  # spill -> physics trigger's E_ECAL cut
        self._backup_ends: set[int] = set()  # spills ended by a copy; the original may follow
        self._last_seq: dict[str, int] = {}

    # --- input ---------------------------------------------------------------------------

    def feed(self, msg: Message) -> list[SpillSummary]:
        """Take one message; return the spills it closed (usually none). Raises
        MonitorInputError (after counting it) for a message that cannot be used."""
        try:
            try:
                return self._feed(msg)
            except WireError as e:  # a marker whose meta is not its kind's (not decoded)
                raise MonitorInputError("meta", e.detail) from None
        except MonitorInputError as e:
            self.refused[e.reason] = self.refused.get(e.reason, 0) + 1
            raise

    def _feed(self, msg: Message) -> list[SpillSummary]:
        self._track_seq(msg)
        if self.run is None:
            self.run = msg.run
        elif msg.run != self.run:
            raise MonitorInputError("run", f"message of run {msg.run} in run {self.run}")
        if msg.kind in _PASSIVE:
            if msg.kind is Kind.SPILL_START:
                self._threshold(msg)
            prev = previous_end(msg)
            if prev is not None and prev.run == msg.run:
                return self._previous_end(prev)
            return []
        if msg.kind is Kind.FEATURES:
            self._features(msg)
        elif msg.kind is Kind.SPILL_END:
            self._spill_end(msg)
        else:
            raise MonitorInputError("kind", f"monitors do not take {msg.kind} messages")
        return self._close_ready(msg.spill)

    def _track_seq(self, msg: Message) -> None:
        # A jump forward counts the skipped numbers as lost; one of them turning up later
        # (a stream that reorders, e.g. a replay merging files) is taken back off the count.
        last = self._last_seq.get(msg.src)
        if msg.seq == 0 and last is not None and last > 0:
            # the sender restarted (a worker after a crash): a new stream, not a duplicate;
            # what it lost is counted per spill (slices announced but never seen)
            self._last_seq[msg.src] = 0
            self.restarted_streams[msg.src] = self.restarted_streams.get(msg.src, 0) + 1
            return
        if last is None or msg.seq > last:
            if last is not None and msg.seq > last + 1:
                self.stream_gaps[msg.src] = self.stream_gaps.get(msg.src, 0) + msg.seq - last - 1
            self._last_seq[msg.src] = msg.seq
            return
        if msg.seq == last or self.stream_gaps.get(msg.src, 0) == 0:
            raise MonitorInputError("duplicate", f"{msg.src} seq {msg.seq} seen already "
                                    f"(last {last})")
        self.stream_gaps[msg.src] -= 1

    def _threshold(self, msg: Message) -> None:
        """The physics trigger's E_ECAL threshold a spill runs with, from the builder's
        spill_start (the configuration it applies from that spill on), for the spill's
        summary; the last `_MAX_THRESHOLDS` spills are remembered."""
        cfg = SpillStart.of(msg).trigger_config
        gev = cfg.get("ecal_max_gev") if cfg else None
        if isinstance(gev, int | float) and not isinstance(gev, bool):
            self._thresholds[msg.spill] = float(gev)
            while len(self._thresholds) > _MAX_THRESHOLDS:
                del self._thresholds[next(iter(self._thresholds))]

    def _spill(self, spill: int) -> _Open:
        if spill in self._closed:
            raise MonitorInputError("late", f"spill {spill} is already closed")
        sp = self._open.get(spill)
        if sp is None:
            sp = self._open[spill] = _Open(Counts(), Spectra.empty(self.cfg))
        return sp

    def _features(self, msg: Message) -> None:
        f = check_features(msg)
        meta = FeaturesMeta.of(msg)  # refused before anything of it is counted
        cells = calib_cells(meta.calib_cells)
        sp = self._spill(msg.spill)
        # one compiled pass (monitors.kernels); monitors.reference is its NumPy twin; then
        # the two counts on complete events it does not make (NumPy, a few cheap passes)
        c = aggregate(f, self.cfg, self.boards, sp.spectra)
        complete_counts(f, c, self.cfg)
        if cells is not None:
            c.calib_cells_n, c.calib_cell_sum, c.calib_cell_sum2 = cells
        sp.counts.add(c)
        sp.slices_seen += 1
        sp.shadow_ran |= meta.shadow_cfg is not None
        if meta.cfg is not None:
            sp.cfgs.add(meta.cfg)

    def _spill_end(self, msg: Message) -> None:
        if msg.spill in self._backup_ends:  # its copy came first and was used
            self._backup_ends.discard(msg.spill)
            return
        end = SpillEnd.of(msg)
        if end.slices is None:
            raise MonitorInputError("meta", f"spill_end of spill {msg.spill} has no slices, "
                                    f"expected a count from the builder")
        sp = self._spill(msg.spill)
        if sp.slices is not None:
            raise MonitorInputError("duplicate", f"second spill_end for spill {msg.spill}")
        self._apply_end(sp, end)

    def _previous_end(self, prev: PreviousEnd) -> list[SpillSummary]:
        """The builder repeats a spill's end in the next spill_start and in run_stop: use
        it when the spill_end itself has not come (it died with a worker)."""
        spill = prev.spill
        if spill in self._closed:
            return []
        # not open: nothing of the spill has come yet (two workers reorder), or it all died
        # with a monitor that was restarted since; either way it is announced and accounted
        sp = self._spill(spill)
        if sp.slices is not None:
            return []  # its spill_end came: nothing to fill in
        self._apply_end(sp, prev.as_end())
        self._backup_ends.add(spill)
        return self._close_ready(spill)

    @staticmethod
    def _apply_end(sp: _Open, end: SpillEnd) -> None:
        sp.slices = end.slices
        sp.resumed = end.resumed is True
        sp.counts.shed += end.shed or 0
        sp.counts.incomplete_board = dict(end.incomplete or {})
        sp.counts.builder_gaps = dict(end.gaps or {})
        sp.scalers = dict(end.scalers or {})

    # --- closing -------------------------------------------------------------------------

    def _close_ready(self, spill: int) -> list[SpillSummary]:
        sp = self._open.get(spill)
        # a resumed spill (the builder restarted in it) counts only the restarted builder's
        # slices: the count cannot close it; later spills or the end of the run do (forced)
        if sp is None or sp.slices is None or sp.slices_seen < sp.slices or sp.resumed:
            return []
        out = [self._close(spill, "complete")]
        for old in sorted(s for s in self._open if s <= spill - self.cfg.max_open_spills):
            out.append(self._close(old, "forced"))
        return out

    def finish(self) -> list[SpillSummary]:
        """Close every open spill (end of run or of input); those incomplete are `forced`."""
        out = []
        for s in sorted(self._open):
            sp = self._open[s]
            done = sp.slices is not None and sp.slices_seen >= sp.slices
            out.append(self._close(s, "complete" if done else "forced"))
        return out

    def _close(self, spill: int, how: Literal["complete", "forced"]) -> SpillSummary:
        sp = self._open.pop(spill)
        self._closed.add(spill)
        self.totals_counts.add(sp.counts)
        self.shadow_ran |= sp.shadow_ran
        self.run_spectra.add(sp.spectra)
        if self.keep_spectra:
            self.spectra[spill] = sp.spectra
        s = SpillSummary(
            run=self.run or 0, spill=spill, source=self.source, closed=how,
            slices=sp.slices, slices_seen=sp.slices_seen, scalers=sp.scalers,
            trigger_cfg=",".join(sorted(sp.cfgs)) or None,
            trigger_ecal_max_gev=self._thresholds.pop(spill, None),
            **figures(sp.counts, self.cfg, shadow_ran=sp.shadow_ran))
        self.summaries.append(s)
        self.closed_spills += 1
        self.forced_spills += how == "forced"
        if self.keep_last is not None and len(self.summaries) >= 2 * self.keep_last:
            self._forget(len(self.summaries) - self.keep_last)
        return s

    def _forget(self, n: int) -> None:
        """Drop the oldest `n` summaries, their spectra, and closed-spill marks far behind."""
        for old in self.summaries[:n]:
            self.spectra.pop(old.spill, None)
        del self.summaries[:n]
        newest = max(self._closed)
        horizon = newest - 4 * (self.keep_last or 0)
        self._closed = {c for c in self._closed if c >= horizon}

    # --- output --------------------------------------------------------------------------

    def mark_closed(self, spills: Sequence[int]) -> None:
        """Spills closed (and published) elsewhere, e.g. by this monitor before a restart:
        their messages are refused as late, their copies of a spill's end ignored."""
        self._closed.update(spills)

    def recently_closed(self, n: int) -> list[int]:
        """The `n` highest spill numbers closed so far."""
        return sorted(self._closed)[-n:]

    @property
    def open_spills(self) -> int:
        return len(self._open)

    def totals(self) -> RunTotals:
        """Figures over every closed spill."""
        return RunTotals(
            spills=self.closed_spills,
            forced_spills=self.forced_spills,
            stream_gaps=dict(self.stream_gaps), refused=dict(self.refused),
            **figures(self.totals_counts, self.cfg, shadow_ran=self.shadow_ran))

    def report(self) -> dict:
        """The `analyze --json` object: run, spills, totals, and the alarm transitions the
        spills (in spill order) cause."""
        ordered = sorted(self.summaries, key=lambda s: s.spill)
        return {"run": self.run, "source": self.source,
                "spills": [s.model_dump(mode="json") for s in self.summaries],
                "totals": self.totals().model_dump(mode="json"),
                "alarms": judge_spills(ordered, self.cfg.alarms, source=self.source)}
