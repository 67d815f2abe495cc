"""Event building, sans I/O: align board fragments by (spill, first), emit built slices.

`EventBuilder.feed(msg, now)` takes one decoded board message and returns the messages to
send downstream; `poll(now)` applies the missing-fragment timeout; `finish(now)` flushes.
There are no sockets and no clock here: the service passes `now` (seconds, monotonic).
Counters are plain attributes (`stats["live"]`, `stats["replay"]`); the service exports
them. docs/dataflow.md fixes what goes in and out; docs/decisions/0004 says why.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from daq import hits
from daq.config import StrictModel, content_hash
from daq.errors import WireError
from daq.geometry import Geometry
from daq.markers import (
    ConfigMarker,
    PreviousEnd,
    RunStart,
    RunStop,
    SliceMeta,
    SpillEnd,
    SpillStart,
)
from daq.wire import Kind, Message

Policy = Literal["flag", "skip_spill", "stop_run"]
#: why a record was refused under run control: of a run other than the open one, while no
#: run is open (between runs), or of a board whose run_start claimed a geometry or
#: calibration hash other than the builder's (for the rest of that run)
REFUSALS = ("other_run", "no_run", "hash_mismatch")
SRC = "builder"
_REORDER_WINDOW = 256  # a seq hole older than this many messages of its stream is lost
_MAX_HOLES = 4096
_CLOSED_MEMORY = 8  # closed spills remembered to classify very late fragments

log = logging.getLogger("na64.builder")


class BuilderConfig(StrictModel):
    """Event builder settings."""

    timeout_s: float = Field(default=1.0, gt=0, le=600, description=(
        "Seconds a partly built slice, or a spill whose first board has ended it, waits for "
        "the missing boards before the policy applies."))
    policy: Policy = Field(default="flag", description=(
        "On a timeout: 'flag' passes the slice on with the board flagged missing; "
        "'skip_spill' drops the rest of the spill (counted); 'stop_run' flags the slice, "
        "closes the spill and ends the run."))
    max_pending_events: int = Field(default=100_000, ge=1, le=100_000_000, description=(
        "Built events queued for downstream before the builder stops reading its input "
        "(backpressure). Partly built slices are bounded apart by the same figure: beyond "
        "it the oldest is completed with its missing boards flagged."))
    max_pending_bytes: int = Field(default=512 << 20, ge=1 << 20, le=1 << 40, description=(
        "The same two bounds in bytes of array data: whichever of max_pending_events and "
        "this is reached first applies. Events alone are no memory bound: an event is "
        "~190 B in feature mode, ~2.2 kB zero-suppressed and ~7 kB as full waveforms."))
    shed_after_s: float = Field(default=2.0, ge=0, le=600, description=(
        "Seconds the front ends may be held back (the queue full, the input not caught up) "
        "before the builder reads again and sheds built slices, counted as dead time, "
        "until it has caught up with its input."))
    input: str = Field(default="tcp://127.0.0.1:5550", min_length=6, max_length=256,
                       description="Endpoint the PULL socket binds; every board connects.")
    output: str = Field(default="tcp://127.0.0.1:5551", min_length=6, max_length=256,
                        description="Endpoint the PUSH socket binds; trigger workers connect.")
    output_hwm: int = Field(default=64, ge=1, le=1_000_000,
                            description="Send high-water mark of the output socket, messages.")
    input_hwm: int = Field(default=1000, ge=1, le=1_000_000, description=(
        "Receive high-water mark of the input socket, messages per connection (ZeroMQ's "
        "default 1000). What it holds is outside max_pending_events: with large slices set "
        "it small (the benchmark uses 16) so that backpressure reaches the front ends."))
    with_crc: bool = Field(default=True, description=(
        "Compute the CRC32C of built slices (off only on trusted inproc links)."))

    @model_validator(mode="after")
    def _distinct(self) -> BuilderConfig:
        if self.input == self.output and not self.input.endswith(":*"):
            raise ValueError("input and output endpoints must differ")
        return self


def _board_counter() -> collections.Counter[str]:
    return collections.Counter()


@dataclass
class Stats:
    """Counters of one source (live or replay). Per-board counters are keyed by board."""

    fragments: collections.Counter[str] = field(default_factory=_board_counter)
    seq_gaps: collections.Counter[str] = field(default_factory=_board_counter)
    duplicates: collections.Counter[str] = field(default_factory=_board_counter)
    out_of_order: collections.Counter[str] = field(default_factory=_board_counter)
    late: collections.Counter[str] = field(default_factory=_board_counter)
    incomplete: collections.Counter[str] = field(default_factory=_board_counter)
    empty: collections.Counter[str] = field(default_factory=_board_counter)
    decode_errors: collections.Counter[str] = field(default_factory=_board_counter)
    #: records refused under run control, by reason (REFUSALS): never built, counted
    refused: collections.Counter[str] = field(default_factory=_board_counter)
    events: int = 0
    slices: int = 0
    shed: int = 0
    skipped: int = 0
    spills: int = 0


@dataclass
class _Pending:
    t0: float
    frags: dict[str, Message] = field(default_factory=dict)
    count: int = 0  # the largest fragment so far
    nbytes: int = 0  # of all its fragments


@dataclass
class _Spill:
    run: int
    spill: int
    replay: bool
    mode: str = ""
    t0_ns: int = 0
    started: set[str] = field(default_factory=set)
    ended: dict[str, int] = field(default_factory=dict)
    scalers: dict[str, dict[str, int]] = field(default_factory=dict)
    pending: dict[int, _Pending] = field(default_factory=dict)
    done: dict[int, frozenset[str]] = field(default_factory=dict)
    t_end: float | None = None
    t_last: float = 0.0  # last fragment: a spill no board ends closes when a later one runs
    slices: int = 0
    events: int = 0
    complete: int = 0  # built events with every board present (the live part of the spill)
    shed: int = 0
    skipped: bool = False
    joined: bool = False  # first seen mid-spill (this builder was restarted): resumed spill
    incomplete: collections.Counter[str] = field(default_factory=_board_counter)
    gaps: collections.Counter[str] = field(default_factory=_board_counter)
    stamp: SliceMeta = field(default_factory=SliceMeta)  # what every built slice carries


@dataclass
class _Stream:
    expected: int | None = None
    run: tuple[int, bool] = (-1, False)
    holes: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (run, spill)


def _default_trigger_config() -> dict[str, Any]:
    from trigger.config import TriggerConfig  # late: daq must not depend on trigger at import

    return TriggerConfig().model_dump(mode="json")


class EventBuilder:
    """Aligns fragments of every geometry board; see the module docstring."""

    def __init__(self, geometry: Geometry, config: BuilderConfig | None = None, *,
                 calibration: str = "",
                 default_trigger_config: Callable[[], dict[str, Any]] | None = None) -> None:
        self.geometry = geometry
        self.config = config or BuilderConfig()
        self.boards = geometry.board_names
        if len(self.boards) > 8:
            raise ValueError("the `missing` mask is uint8: at most 8 boards")
        self.bit = {b: 1 << i for i, b in enumerate(self.boards)}
        self.nch = {b: geometry.n_channels(b) for b in self.boards}
        self.calibration = calibration
        self.stats = {"live": Stats(), "replay": Stats()}
        self.shedding = False
        self.stopped = False
        self.stop_reason = ""
        self.seq = 0
        self.run = 0
        self._spills: dict[tuple[int, int], _Spill] = {}
        self._closed: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=_CLOSED_MEMORY)
        self._streams: dict[str, _Stream] = {b: _Stream() for b in self.boards}
        self._runs_started: set[int] = set()
        #: the run's configuration snapshot (from run control) for the run_start marker
        self.run_config: dict[str, Any] | None = None
        #: called (config, who, run, spill) when a new trigger configuration becomes active
        self.on_activate: Callable[[dict[str, Any], str, int, int], None] | None = None
        cfg = (default_trigger_config or _default_trigger_config)()
        if not cfg:
            raise ValueError("the default trigger configuration is empty")
        self._active: tuple[dict[str, Any], str, str] = (cfg, content_hash(cfg), "default")
        self._announced = False
        self._previous_end: PreviousEnd | None = None
        self._pending_events = 0
        self._pending_bytes = 0
        self._last_spill = 0
        self._replay = False
        self._next_cfg: tuple[dict[str, Any], str, str] | None = None
        self._shadow: dict[str, Any] | None = None
        self._next_shadow: tuple[dict[str, Any] | None] | None = None
        #: under run control: the run (number, replay) that is open; records of any other
        #: are refused and counted (None with `gated`: between runs, everything is refused)
        self.gated = False
        self.current: tuple[int, bool] | None = None
        self._open_run: tuple[int, bool] | None = None  # announced downstream, not stopped
        self._board_stops: set[str] = set()
        #: board -> the live run whose run_start it sent with another geometry or
        #: calibration hash than the builder's: its records of that run are refused
        self._mismatched: dict[str, tuple[int, bool]] = {}
        self._end_requested: float | None = None
        self.runs_closed = 0
        self._run_base = (0, 0)  # (events, spills) of the stats when the open run started

    # -- runs under run control --------------------------------------------------------------

    def begin_run(self, run: int, *, replay: bool = False,
                  snapshot: dict[str, Any] | None = None) -> None:
        """Run control opened `run`: take its records (and only those) from now on."""
        self.gated = True
        self.current = (run, replay)
        self.run_config = dict(snapshot) if snapshot else None
        self._board_stops = set()
        self._end_requested = None
        self._previous_end = None

    def end_run(self, now: float) -> list[Message]:
        """Run control stops the run: it closes when every board's run_stop is in, or
        `timeout_s` from now (boards that never sent theirs count as missing)."""
        if self._end_requested is None:
            self._end_requested = now
        return self._maybe_end_run(now)

    def _maybe_end_run(self, now: float) -> list[Message]:
        if self._open_run is None:
            if self._end_requested is None:
                return []
            out = [] if self.current is None or self.current[0] in self._runs_started \
                else self._close_unopened(now)  # else closed already (every board ended it)
            self.current, self._end_requested = None, None
            return out
        everyone = len(self._board_stops) == len(self.boards)
        late = self._end_requested is not None \
            and now - self._end_requested >= self.config.timeout_s
        if not (everyone or late):
            return []
        out = self._close_run(now, "stopped by run control" if self._end_requested
                              is not None else "every board ended the run")
        self.current = None
        return out

    # -- configuration ---------------------------------------------------------------------

    def set_trigger_config(self, cfg: dict[str, Any], who: str) -> str:
        """Make `cfg` active from the next spill start; returns its hash."""
        h = content_hash(cfg)
        self._next_cfg = (cfg, h, who)
        return h

    def resume_trigger_config(self, cfg: dict[str, Any], who: str) -> str:
        """Make `cfg` active at once: a restarted builder takes up the configuration run
        control had made active before, from its first slice (not from the next spill,
        which would build the rest of this one with the default). Returns its hash."""
        h = content_hash(cfg)
        if h != self._active[1]:
            self._active = (cfg, h, who)
            self._announced = False  # the next spill_start writes a config marker
        return h

    def set_shadow_config(self, cfg: dict[str, Any] | None) -> None:
        """Evaluate `cfg` alongside from the next spill start (None: no shadow)."""
        self._next_shadow = (cfg,)

    @property
    def active_config(self) -> tuple[dict[str, Any], str]:
        return self._active[0], self._active[1]

    @property
    def pending_events(self) -> int:
        """Events in partly built slices."""
        return self._pending_events

    @property
    def pending_bytes(self) -> int:
        """Bytes of array data in partly built slices (bounded by max_pending_bytes)."""
        return self._pending_bytes

    # -- input -----------------------------------------------------------------------------

    def board_of(self, msg: Message) -> str | None:
        """The geometry board a message is from: its `board` field, else (a marker that
        leaves it empty, such as an `eos`) its `src`; None for neither. The service ends its
        input on the `eos` of every board so named, as this core takes them."""
        board = msg.board if msg.board in self.bit else msg.src
        return board if board in self.bit else None

    def feed(self, msg: Message, now: float) -> list[Message]:
        """Take one board message; return what to send downstream, in order."""
        out: list[Message] = []
        board = self.board_of(msg)
        stats = self.stats["replay" if msg.replay else "live"]
        self._replay = msg.replay
        if board is None:
            stats.decode_errors["unknown"] += 1
            return out
        if not self._sequence(board, msg, stats):
            return out
        if self.stopped:
            return out
        if self.gated and msg.kind is not Kind.END_OF_STREAM \
                and (msg.run, msg.replay) != self.current:
            stats.refused["no_run" if self.current is None else "other_run"] += 1
            return out
        if self.gated and not self._configured_alike(board, msg):
            stats.refused["hash_mismatch"] += 1
            return out
        if self.gated and self._open_run is None and msg.kind is not Kind.RUN_START:
            # joined the run under way (restarted during it): its run_start went by before
            # this builder existed, but the boards' run_stops will close it here all the same
            self._open_run = self.current
        try:
            self._dispatch(board, msg, stats, now, out)
        except WireError:  # a marker whose meta is not its kind's (one not from decode)
            stats.decode_errors[board] += 1
        return out

    def _configured_alike(self, board: str, msg: Message) -> bool:
        """False for the records of a run whose run_start, from this board, claimed a
        geometry or calibration hash other than the builder's: built with the others, its
        data would be read with the wrong channel map or gains. A board that claims none
        is taken on trust. A replay reprocesses recorded data with the installed
        calibration on purpose, so only its geometry is checked: no calibration makes
        another channel map readable (decision 0024). Offline builds are not gated."""
        key = (msg.run, msg.replay)
        if msg.kind is Kind.RUN_START:
            try:
                start = RunStart.of(msg)
            except WireError:
                return True  # counted as a decode error by _dispatch
            checked = [("geometry", start.geometry, self.geometry.hash)]
            if not msg.replay:
                checked.append(("calibration", start.calibration, self.calibration))
            wrong = [f"{what} {claimed!r} (builder: {own!r})" for what, claimed, own in checked
                     if claimed is not None and own and claimed != own]
            if wrong:
                if self._mismatched.get(board) != key:
                    log.warning("board %s %srun %d: run_start claims %s; its records of the "
                                "run are refused (hash_mismatch)", board,
                                "replay " if msg.replay else "", msg.run, " and ".join(wrong))
                self._mismatched[board] = key
            elif self._mismatched.get(board) == key:
                del self._mismatched[board]  # sent again with the builder's hashes
        return msg.kind is Kind.END_OF_STREAM or self._mismatched.get(board) != key

    def _dispatch(self, board: str, msg: Message, stats: Stats, now: float,
                  out: list[Message]) -> None:
        if msg.kind is Kind.SLICE:
            self._slice(board, msg, stats, now, out)
        elif msg.kind is Kind.SPILL_START:
            start = SpillStart.of(msg)
            st = self._spill(msg, now, out, start.t0_ns)
            if st is not None:
                st.started.add(board)
                st.t0_ns = st.t0_ns or start.t0_ns
        elif msg.kind is Kind.SPILL_END:
            end = SpillEnd.of(msg)
            st = self._spill(msg, now, out)
            if st is not None:
                st.ended[board] = end.events
                if end.scalers is not None:
                    st.scalers[board] = end.scalers
                st.t_end = now if st.t_end is None else st.t_end
                self._maybe_close(st, now, out)
        elif msg.kind is Kind.RUN_START:
            self._run_start(msg, out)
        elif msg.kind is Kind.RUN_STOP:
            # a board ended the run (after its last spill_end): the run closes once every
            # board has, or at run control's stop plus the timeout
            if (msg.run, msg.replay) == self._open_run:
                self._board_stops.add(board)
                out += self._maybe_end_run(now)
        elif msg.kind in (Kind.END_OF_STREAM, Kind.CONFIG):
            pass  # the stream ends at finish(); a board's config marker adds nothing
        else:
            stats.decode_errors[board] += 1

    def _sequence(self, board: str, msg: Message, stats: Stats) -> bool:
        """Account the stream's seq; False for a duplicate message (dropped)."""
        s = self._streams[board]
        if s.expected is None or (msg.seq == 0 and (msg.run, msg.replay) != s.run):
            s.expected, s.holes = msg.seq + 1, {}  # a (re)started stream, or a replay
            s.run = (msg.run, msg.replay)
            return True
        s.run = (msg.run, msg.replay)
        if msg.seq >= s.expected:
            gap = msg.seq - s.expected
            if gap > _MAX_HOLES:  # too many to wait for: count them lost now
                stats.seq_gaps[board] += gap
            else:
                for h in range(s.expected, msg.seq):
                    s.holes[h] = (msg.run, msg.spill)
            s.expected = msg.seq + 1
            self._confirm_holes(board, s, stats, below=msg.seq - _REORDER_WINDOW)
            return True
        if msg.seq in s.holes:
            del s.holes[msg.seq]
            stats.out_of_order[board] += 1
            return True
        stats.duplicates[board] += 1
        return False

    def _confirm_holes(self, board: str, s: _Stream, stats: Stats, below: int,
                       spill: tuple[int, int] | None = None) -> None:
        for h in [h for h, k in s.holes.items() if h < below or k == spill]:
            run, sp = s.holes.pop(h)
            stats.seq_gaps[board] += 1
            st = self._spills.get((run, sp))
            if st is not None:
                st.gaps[board] += 1

    def _run_start(self, msg: Message, out: list[Message]) -> None:
        if msg.run not in self._runs_started:
            self._open(msg.run, msg.replay, RunStart.of(msg), out)

    def _open(self, run: int, replay: bool, start: RunStart, out: list[Message]) -> None:
        """Open `run` and announce it downstream with the first run_start taken."""
        self._runs_started.add(run)
        self.run = run
        self._open_run = (run, replay)
        self._board_stops = set()
        st = self.stats["replay" if replay else "live"]
        self._run_base = (st.events, st.spills)
        start = replace(
            start, geometry=start.geometry or self.geometry.hash,
            # the calibration its events are decided with (every slice's `calib`): a
            # replay's boards may claim the recording's (decision 0024)
            calibration=self.calibration or start.calibration,
            # run control's snapshot goes into the run file
            config=start.config if self.run_config is None else self.run_config)
        out.append(self._emit(Kind.RUN_START, run, 0, replay, meta=start.to_meta()))

    def _close_unopened(self, now: float) -> list[Message]:
        """Run control stops a run that no board's record opened here (each refused, as
        hash_mismatch, or none sent): it is announced and closed downstream, empty, with
        the reason, so that the recorder and the monitors close it as run control waits
        for them to (they would wait for it until run control's timeout)."""
        assert self.current is not None
        run, replay = self.current
        refused = sorted(b for b, key in self._mismatched.items() if key == self.current)
        why = (f"boards {', '.join(refused)} refused (hash_mismatch)" if refused
               else "no board sent a record of it")
        out: list[Message] = []
        self._last_spill = 0
        self._open(run, replay, RunStart(), out)
        return out + self._close_run(now, f"stopped by run control; no event: {why}")

    def _spill(self, msg: Message, now: float, out: list[Message],
               t0_ns: int = 0) -> _Spill | None:
        """The spill of `msg`, opened (config and spill_start sent) if new; None if closed.
        `t0_ns`: the spill's start when `msg` is a board's spill_start."""
        key = (msg.run, msg.spill)
        st = self._spills.get(key)
        if st is not None:
            return st
        if key in self._closed:
            return None
        self.run, self._last_spill = msg.run, msg.spill
        if self._next_cfg is not None:
            self._active, self._next_cfg = self._next_cfg, None
            self._announced = False
            if self.on_activate is not None:  # run control: active from this spill on
                self.on_activate(self._active[0], self._active[2], msg.run, msg.spill)
        if self._next_shadow is not None:
            self._shadow, self._next_shadow = self._next_shadow[0], None
        cfg, h, who = self._active
        if not self._announced:
            self._announced = True
            out.append(self._emit(Kind.CONFIG, msg.run, msg.spill, msg.replay,
                                  meta=ConfigMarker(cfg, h, who=who, when=now).to_meta()))
        st = _Spill(msg.run, msg.spill, msg.replay, t_last=now,
                    joined=msg.kind is not Kind.SPILL_START)
        st.stamp = SliceMeta(cfg=h, trigger_config=cfg, shadow_config=self._shadow,
                             calib=self.calibration)
        self._spills[key] = st
        self.stats["replay" if msg.replay else "live"].spills += 1
        start = SpillStart(t0_ns, cfg=h, trigger_config=cfg, shadow_config=self._shadow,
                           previous_end=self._previous_end, resumed=st.joined)
        out.append(self._emit(Kind.SPILL_START, msg.run, msg.spill, msg.replay,
                              meta=start.to_meta()))
        return st

    def _slice(self, board: str, msg: Message, stats: Stats, now: float,
               out: list[Message]) -> None:
        try:
            mode = SliceMeta.of(msg).mode
            empty = self._check(board, msg, mode)
        except WireError:
            stats.decode_errors[board] += 1
            return
        st = self._spill(msg, now, out)
        if st is None:
            stats.late[board] += 1
            return
        if st.mode and mode != st.mode:
            stats.decode_errors[board] += 1  # a board in another mode cannot be merged
            return
        st.mode = st.mode or str(mode)
        stats.fragments[board] += 1
        if empty:
            stats.empty[board] += 1
        if st.skipped:
            stats.skipped += msg.count
            return
        if msg.first in st.done:
            (stats.duplicates if board in st.done[msg.first] else stats.late)[board] += 1
            return
        p = st.pending.setdefault(msg.first, _Pending(now))
        if board in p.frags:
            stats.duplicates[board] += 1
            return
        p.frags[board] = msg
        nbytes = msg.nbytes
        p.nbytes += nbytes
        self._pending_bytes += nbytes
        if msg.count > p.count:
            self._pending_events += msg.count - p.count
            p.count = msg.count
        st.t_last = now
        if len(p.frags) == len(self.boards):
            self._complete(st, msg.first, now, out)
        elif self.pending_events > self.config.max_pending_events \
                or self.pending_bytes > self.config.max_pending_bytes:
            oldest = min(st.pending, key=lambda f: st.pending[f].t0)
            self._complete(st, oldest, now, out)  # memory bound: do not wait longer
        self._maybe_close(st, now, out)

    def _check(self, board: str, msg: Message, mode: str | None) -> bool:
        """Validate a fragment against the geometry; True when it is empty (suppressed)."""
        a, n, nch = msg.arrays, msg.count, self.nch[board]
        if n == 0:
            raise WireError("shape", "slice with zero events")
        ts = a.get("ts")
        if ts is None or ts.dtype != np.int64:
            raise WireError("shape", "slice lacks int64 'ts'")
        if mode not in ("waveform", "feature"):
            raise WireError("header", f"mode {mode!r}")
        if len(a) == 1:
            return True
        samples = self.geometry.detector.samples
        what = f"{board} slice"
        if mode == "waveform" and "wave" in a:
            want = {"ts", "wave"}
            w = a["wave"]
            if w.shape != (n, samples, nch) or w.dtype != np.dtype("<i2"):
                raise WireError("shape", f"{what}: 'wave' is {w.dtype}{w.shape}, expected "
                                         f"int16{(n, samples, nch)}")
        else:
            spec = hits.WAVE_HITS if mode == "waveform" else hits.FEATURE_HITS
            want = {"ts", "nhit", *spec}
            hits.check(a, n, nch, spec, samples=samples, what=what)
        extra = set(a) - want
        if extra:
            raise WireError("shape", f"{what}: unexpected arrays {sorted(extra)} in {mode} mode")
        return False

    # -- building --------------------------------------------------------------------------

    def _pad(self, board: str, name: str, src: np.ndarray, count: int) -> np.ndarray:
        """A short fragment's per-event array padded to `count` events (the one copy)."""
        if name == "wave":  # events the board did not send read the nominal pedestal
            full = np.full((count, *src.shape[1:]), round(self.geometry.detector.pedestal),
                           np.int16)
        else:  # nhit: no hits
            full = np.zeros(count, src.dtype)
        full[:len(src)] = src
        return full

    def _complete(self, st: _Spill, first: int, now: float, out: list[Message]) -> None:
        p = st.pending.pop(first)
        self._pending_events -= p.count
        self._pending_bytes -= p.nbytes
        st.done[first] = frozenset(p.frags)
        stats = self.stats["replay" if st.replay else "live"]
        count = max(m.count for m in p.frags.values())
        missing = np.zeros(count, np.uint8)
        ts_from = next(m for b in self.boards
                       if (m := p.frags.get(b)) is not None and m.count == count)
        arrays: dict[str, np.ndarray] = {"ts": ts_from.arrays["ts"], "missing": missing}
        # the fragments' checksums, verified on receipt, go out again with their arrays
        crcs = {"ts": ts_from.crcs["ts"]} if "ts" in ts_from.crcs else {}
        complete = count  # a board has its first `have` events: all have the first min(have)
        for b in self.boards:
            m = p.frags.get(b)
            have = 0 if m is None else m.count
            complete = min(complete, have)
            if have < count:
                missing[have:] |= self.bit[b]
                st.incomplete[b] += count - have
                stats.incomplete[b] += count - have
            if m is None:  # a missing board's arrays are absent: it read nothing
                continue
            for name, src in m.arrays.items():
                if name == "ts":
                    continue
                if have < count and not hits.is_hit_array(name):
                    src = self._pad(b, name, src, count)
                elif name in m.crcs:
                    crcs[f"{b}.{name}"] = m.crcs[name]
                arrays[f"{b}.{name}"] = src
        if self.shedding:
            st.shed += count
            stats.shed += count
            return
        meta = replace(st.stamp, mode=st.mode, slice_index=st.slices).to_meta()
        st.slices += 1
        st.events += count
        st.complete += complete
        stats.slices += 1
        stats.events += count
        built = self._emit(Kind.SLICE, st.run, st.spill, st.replay, first=first,
                           count=count, arrays=arrays, meta=meta, board="ALL")
        built.crcs = crcs  # encode reuses a CRC only for the very array it came with
        out.append(built)

    def _emit(self, kind: Kind, run: int, spill: int, replay: bool, *, first: int = 0,
              count: int = 0, arrays: dict[str, np.ndarray] | None = None,
              meta: dict[str, Any] | None = None, board: str = "") -> Message:
        m = Message(kind=kind, run=run, spill=spill, seq=self.seq, src=SRC, board=board,
                    first=first, count=count, arrays=arrays or {}, meta=meta or {},
                    replay=replay)
        self.seq += 1
        return m

    # -- timeouts and spill ends -------------------------------------------------------------

    def _maybe_close(self, st: _Spill, now: float, out: list[Message], *,
                     force: bool = False) -> None:
        all_ended = len(st.ended) == len(self.boards)
        timed_out = st.t_end is not None and now - st.t_end >= self.config.timeout_s
        # no board ended it (all died?) but the run has moved on to a later spill
        abandoned = (st.t_end is None and not st.pending
                     and now - st.t_last >= self.config.timeout_s
                     and any(k[0] == st.run and k[1] > st.spill for k in self._spills))
        timed_out = timed_out or abandoned
        if not (force or timed_out or (all_ended and not st.pending)):
            return
        for first in sorted(st.pending):
            self._complete(st, first, now, out)
        for b in self.boards:
            self._confirm_holes(b, self._streams[b], self.stats["replay" if st.replay
                                else "live"], below=-1, spill=(st.run, st.spill))
        beam = st.scalers.get("BEAM", {})
        end = SpillEnd(st.events, slices=st.slices, complete=st.complete,
                       incomplete=dict(st.incomplete), shed=st.shed, gaps=dict(st.gaps),
                       scalers=dict(beam), board_events=dict(st.ended), skipped=st.skipped,
                       resumed=st.joined, cfg=st.stamp.cfg)
        out.append(self._emit(Kind.SPILL_END, st.run, st.spill, st.replay, meta=end.to_meta()))
        # repeated in the next spill_start and in run_stop: the spill_end travels through
        # one worker only, and a worker that dies with it must not make the spill's
        # accounting (announced, shed) vanish downstream
        self._previous_end = PreviousEnd(st.run, st.spill, st.slices, st.events,
                                         complete=st.complete, incomplete=end.incomplete,
                                         shed=st.shed, gaps=end.gaps, scalers=end.scalers,
                                         resumed=st.joined)
        del self._spills[(st.run, st.spill)]
        self._closed.append((st.run, st.spill))

    def poll(self, now: float) -> list[Message]:
        """Apply the timeout: partly built slices and spills waiting too long."""
        out: list[Message] = []
        if self.stopped:
            return out
        if self._end_requested is not None:
            out += self._maybe_end_run(now)
        for st in list(self._spills.values()):
            late = sorted(f for f, p in st.pending.items()
                          if now - p.t0 >= self.config.timeout_s)
            if late:
                absent = sorted({b for f in late for b in self.boards
                                 if b not in st.pending[f].frags})
                if self.config.policy == "skip_spill":
                    self._skip(st)
                for f in late:
                    if f in st.pending:
                        self._complete(st, f, now, out)
                if self.config.policy == "stop_run":
                    self.stop_reason = (f"boards {absent} missing in run {st.run} spill "
                                        f"{st.spill} after {self.config.timeout_s} s")
                    out += self._stop(now)
                    return out
            self._maybe_close(st, now, out)
        return out

    def _skip(self, st: _Spill) -> None:
        """Policy skip_spill: drop what is pending of the spill and whatever follows."""
        st.skipped = True
        stats = self.stats["replay" if st.replay else "live"]
        for f, p in list(st.pending.items()):
            st.done[f] = frozenset(p.frags)
            stats.skipped += p.count
            self._pending_events -= p.count
            self._pending_bytes -= p.nbytes
        st.pending.clear()

    def _close_run(self, now: float, reason: str) -> list[Message]:
        """Close every open spill (flagging what is missing) and emit the run's run_stop."""
        out: list[Message] = []
        for st in list(self._spills.values()):
            self._maybe_close(st, now, out, force=True)
        run, replay = self._open_run or (self.run, self._replay)
        stats = self.stats["replay" if replay else "live"]
        events0, spills0 = self._run_base
        stop = RunStop(self.stop_reason or reason, events=stats.events - events0,
                       spills=stats.spills - spills0, previous_end=self._previous_end,
                       boards_stopped=sorted(self._board_stops))
        out.append(self._emit(Kind.RUN_STOP, run, self._last_spill, replay,
                              meta=stop.to_meta()))
        self._open_run = None
        self._board_stops = set()
        self._end_requested = None
        self.runs_closed += 1
        return out

    def _stop(self, now: float) -> list[Message]:
        out = self._close_run(now, "end of input")
        self.stopped = True
        return out

    def finish(self, now: float) -> list[Message]:
        """Flush every open spill (flagging what is missing) and end the stream. A run
        already closed by its run_stop is not closed again."""
        out: list[Message]
        if self.stopped:
            out = []
        elif self._open_run is None and self.runs_closed:
            self.stopped = True
            out = []
        else:
            out = self._stop(now)
        out.append(self._emit(Kind.END_OF_STREAM, self.run, self._last_spill, self._replay))
        return out
