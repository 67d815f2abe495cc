"""The recorder: accepted events and every marker into run files, one file per run.

`Recording` is the synchronous core (no sockets, no event loop): it opens a file at
`run_start`, writes what it is given, holds a `spill_end` back until one output of each
of the `slices` built slices it announces has been written (trigger workers may reorder
them), so that the fsync at the spill end covers the whole spill, and closes the file at
`run_stop`. A spill_end that died with a worker is written from the builder's repeat of it
in the next spill_start or the run_stop (`previous_end`, marked `copy_of`).
`RecorderService` wraps it with a PULL socket and Prometheus metrics, and
`python -m daq.recorder --listen ENDPOINT --dir DIR` runs it as a process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.asyncio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daq.curve import SocketHook
from daq.errors import DaqError, RunFileError
from daq.inlet import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REASONS,
    Received,
    Refusals,
    ZmqInlet,
    drain,
)
from daq.markers import RunStart, SpillEnd, previous_end
from daq.runfile import RunFileWriter, partial_path
from daq.service import Loop, Service
from daq.transport import close_transport, context
from daq.wire import Kind, Message

#: kinds recorded besides ACCEPTED (SLICE too in raw mode)
MARKERS = frozenset({Kind.RUN_START, Kind.RUN_STOP, Kind.SPILL_START, Kind.SPILL_END,
                     Kind.CONFIG})


_QUIET_S = 0.25  # at stop: the input is drained once nothing has come for this long


_MAX_EARLY = 4096  # messages held while waiting for a run_start (then resume)


def run_file_name(run: int) -> str:
    return f"run{run:06d}.na64"


@dataclass
class _OpenSpill:
    outputs: int = 0
    end: Message | None = None
    t_end: float = 0.0
    copy: bool = False  # `end` was made from the builder's repeat of it (`previous_end`)


@dataclass
class FileCounts:
    """What went into the current file(s) of a run."""

    records: int = 0
    bytes: int = 0
    events: int = 0
    spills: int = 0


@dataclass
class Recording:
    """Sans-socket core of the recorder; see the module docstring."""

    directory: Path
    max_bytes: int | None = None
    raw: bool = False
    spill_timeout_s: float = 10.0
    on_fsync: Callable[[float], None] = lambda dt: None
    writer: RunFileWriter | None = None
    run: int = 0
    replay: bool = False
    counts: FileCounts = field(default_factory=FileCounts)
    files: list[Path] = field(default_factory=list)
    incomplete_spills: int = 0
    ignored: int = 0
    total_records: int = 0
    total_bytes: int = 0
    _spills: dict[int, _OpenSpill] = field(default_factory=dict)
    resume_after_s: float = 2.0
    resumed: int = 0  # continuation files opened after a restart in the middle of a run
    _early: list[Message] = field(default_factory=list)  # data before its run_start
    _t_early: float = 0.0
    closed_runs: set[tuple[int, bool]] = field(default_factory=set)
    #: what each closed run left (run, replay, files, events, spills), taken by the service
    closed_log: list[dict[str, Any]] = field(default_factory=list)
    _held_stop: Message | None = None
    _t_stop: float = 0.0
    #: how long a spill end made from `previous_end` waits for the original (which carries
    #: more: events per board, skipped, cfg) before it is written in its place
    copy_grace_s: float = 1.0
    end_copies: int = 0  # spill ends written from the builder's repeat (the original died)
    _started: set[int] = field(default_factory=set)  # spills whose spill_start is in the file
    _ended: set[int] = field(default_factory=set)  # spills whose spill_end is in the file

    def handle(self, msg: Message, now: float) -> int:
        """Record one message; returns the bytes written (0 if held back or ignored)."""
        if msg.kind is Kind.RUN_START:
            if self.writer is not None and msg.run == self.run:
                return self._write(msg)  # another board's run_start in raw mode
            if self.writer is not None:
                self.close()
            self._open(msg)
            n = self._write(msg)
            early = [m for m in self._early if (m.run, m.replay) == (msg.run, msg.replay)]
            self._early = []
            return n + sum(self.handle(m, now) for m in early)
        wanted = msg.kind in MARKERS or msg.kind is Kind.ACCEPTED \
            or (self.raw and msg.kind is Kind.SLICE)
        if self.writer is None and msg.kind is Kind.RUN_STOP and self._early \
                and (msg.run, msg.replay) == (self._early[0].run, self._early[0].replay):
            self._early.append(msg)  # the run ended while its first messages were held
            return self._resume(now)
        if self.writer is None and wanted and msg.kind is not Kind.RUN_STOP \
                and (msg.run, msg.replay) not in self.closed_runs:
            # data of a run not (yet) started here: either its run_start is still on its
            # way through another worker, or this recorder was restarted in the middle of
            # the run. Hold it for resume_after_s, then record it in a continuation file.
            if not self._early:
                self._t_early = now
            self._early.append(msg)
            if len(self._early) < _MAX_EARLY and now - self._t_early < self.resume_after_s:
                return 0
            return self._resume(now)
        if self.writer is None or not wanted:
            self.ignored += 1
            return 0
        self._adopt_previous_end(msg, now)
        if msg.kind is Kind.RUN_STOP:
            if self._spills and not self.raw:
                # several workers: accepted events of the last spills may still be on their
                # way; close when they are in (or at the spill timeout), never before
                self._held_stop, self._t_stop = msg, now
                return 0
            return self._stop(msg)
        if msg.kind is Kind.SPILL_END and not self.raw:
            if msg.spill in self._ended:  # its copy was written in its place: not twice
                self.ignored += 1
                return 0
            sp = self._spills.setdefault(msg.spill, _OpenSpill())
            sp.end, sp.t_end, sp.copy = msg, now, False  # the original wins over a copy
            return self._settle(msg.spill)
        n = self._write(msg)
        if msg.kind is Kind.SPILL_START:
            self._started.add(msg.spill)
        if msg.kind is Kind.ACCEPTED:
            self.counts.events += msg.count
            if not self.raw:
                self._spills.setdefault(msg.spill, _OpenSpill()).outputs += 1
                n += self._settle(msg.spill)
        return n

    def _adopt_previous_end(self, msg: Message, now: float) -> None:
        """The builder repeats each spill's end in the next spill_start and in run_stop: the
        spill_end itself travels through one worker, and dies with it. A spill whose start
        is in the file and whose end has not come gets its end from the repeat (marked
        `copy_of`), after `copy_grace_s` unless the original comes first."""
        prev = None if self.raw else previous_end(msg)
        if prev is None or prev.run != msg.run:
            return
        spill = prev.spill
        if spill not in self._started or spill in self._ended:
            return
        sp = self._spills.setdefault(spill, _OpenSpill())
        if sp.end is not None:
            return
        sp.end = Message(Kind.SPILL_END, run=msg.run, spill=spill, src=msg.src,
                         meta=prev.as_end().to_meta(), replay=msg.replay)
        sp.t_end, sp.copy = now, True

    def _settle(self, spill: int, force: bool = False, now: float | None = None) -> int:
        sp = self._spills[spill]
        if sp.end is None:
            return 0
        if sp.copy and not force and (now is None or now - sp.t_end < self.copy_grace_s):
            return 0
        want = SpillEnd.of(sp.end).slices or 0
        if sp.outputs < want and not force:
            return 0
        if sp.outputs < want:
            self.incomplete_spills += 1
        del self._spills[spill]
        self._ended.add(spill)
        self.end_copies += sp.copy
        n = self._write(sp.end)
        if self._held_stop is not None and not self._spills:
            n += self._stop(self._held_stop)
        return n

    def _stop(self, msg: Message) -> int:
        self._held_stop = None
        n = self._write(msg)
        self.close()
        return n

    def _resume(self, now: float) -> int:
        """Open a continuation file for the held messages' run and record them."""
        early, self._early = self._early, []
        self._open(early[0], resumed=True)
        self.resumed += 1
        return sum(self.handle(m, now) for m in early)

    def poll(self, now: float) -> int:
        """Close spills whose outputs did not all come within spill_timeout_s (counted)."""
        if self._early and now - self._t_early >= self.resume_after_s:
            self._resume(now)
        late = [s for s, sp in self._spills.items()
                if sp.end is not None and now - sp.t_end >= self.spill_timeout_s]
        n = sum(self._settle(s, force=True) for s in late)
        copies = [s for s, sp in self._spills.items()
                  if sp.copy and now - sp.t_end >= self.copy_grace_s]
        n += sum(self._settle(s, now=now) for s in copies)
        if self._held_stop is not None and now - self._t_stop >= self.spill_timeout_s:
            for s in sorted(self._spills):  # a spill whose end never came: close what we have
                self.incomplete_spills += 1
                if self._spills[s].end is not None:
                    n += self._settle(s, force=True)
            self._spills.clear()
            if self._held_stop is not None:
                n += self._stop(self._held_stop)
        return n

    def _open(self, msg: Message, *, resumed: bool = False) -> None:
        self.run, self.replay = msg.run, msg.replay
        self.counts = FileCounts()
        self._spills = {}
        self._started, self._ended = set(), set()
        name = run_file_name(msg.run)
        if msg.replay:
            name = "replay-" + name
        path = self.directory / name
        k = 0
        # a re-used run number, or the .partial a crashed recorder left: keep both
        while path.exists() or partial_path(path).exists():
            k += 1
            path = self.directory / f"{name}.{k}"
        # a resumed file opens on whatever came first, a run_start only if it was one
        start = RunStart.of(msg) if msg.kind is Kind.RUN_START else RunStart()
        config = (start.config or {}) if not resumed else {
            "resumed": {"spill": msg.spill, "kind": str(msg.kind),
                        "why": "recorder restarted during the run; the run's first part "
                               "is in the file(s) before this one"}}
        self.writer = RunFileWriter(
            path, run=msg.run, config=config, geometry_hash=start.geometry or "",
            calibration_hash=start.calibration or "", max_bytes=self.max_bytes)

    def _write(self, msg: Message) -> int:
        assert self.writer is not None
        t0 = time.perf_counter()
        n = self.writer.write(msg)
        if msg.kind is Kind.SPILL_END:
            self.on_fsync(time.perf_counter() - t0)
            self.counts.spills += 1
        self.counts.records += 1
        self.counts.bytes += n
        self.total_records += 1
        self.total_bytes += n
        return n

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> list[Path]:
        """Close the run's file(s), writing any held spill end first."""
        if self.writer is None and self._early:
            self._resume(self._t_early)  # stopping: what was held goes into a file too
        if self.writer is None:
            return []
        held, self._held_stop = self._held_stop, None  # written last, after the spills
        for s in sorted(self._spills):
            if self._spills[s].end is not None:
                self._settle(s, force=True)
        self._spills.clear()
        if held is not None:
            self._write(held)
        counts = self.counts
        closed = self.writer.close()
        self.files += closed
        self.writer = None
        self.closed_runs.add((self.run, self.replay))
        self.closed_log.append({"run": self.run, "replay": self.replay,
                                "files": [str(p) for p in closed], "events": counts.events,
                                "spills": counts.spills, "bytes": counts.bytes})
        return closed


class RecorderService(Service):
    """PULL bound on `listen`; records into `directory`; metrics `na64_recorder_*`."""

    name = "recorder"

    def __init__(self, directory: str | Path, registry: CollectorRegistry, *, listen: str,
                 max_bytes: int | None = None, raw: bool = False,
                 ctx: zmq.asyncio.Context | None = None,
                 secure: SocketHook | None = None,
                 spill_timeout_s: float = 10.0, drain_timeout_s: float = 5.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__()
        self.drain_timeout_s = drain_timeout_s
        d = Path(directory)
        if not d.is_dir():
            raise RunFileError(str(d), "is not a directory")
        labels = ["source"]
        self.m_records = Counter("na64_recorder_records", "Records written", labels,
                                 registry=registry)
        self.m_bytes = Counter("na64_recorder_bytes", "Bytes written", labels,
                               registry=registry)
        self.m_events = Counter("na64_recorder_events", "Accepted events written", labels,
                                registry=registry)
        self.m_files = Counter("na64_recorder_files", "Run files closed", labels,
                               registry=registry)
        self.m_errors = Counter("na64_recorder_decode_errors",
                                "Messages refused as malformed or too large, by reason "
                                "(daq.inlet.REASONS)", ["reason"], registry=registry)
        for reason in REASONS:
            self.m_errors.labels(reason)
        self.m_write_errors = Counter("na64_recorder_write_errors",
                                      "Messages that could not be written", registry=registry)
        self.m_ignored = Counter("na64_recorder_ignored",
                                 "Messages not recorded (no run open for them, or of a kind "
                                 "the recorder does not keep)", registry=registry)
        self.m_end_copies = Counter(
            "na64_recorder_spill_end_copies", "Spill ends written from the builder's repeat "
            "of them (previous_end): the original died with a worker", registry=registry)
        self.m_resumed = Counter("na64_recorder_resumed_files",
                                 "Continuation files opened for a run already under way "
                                 "(the recorder was restarted in the middle of it)",
                                 registry=registry)
        self.m_incomplete = Counter("na64_recorder_incomplete_spills",
                                    "Spills closed without all their slices' outputs",
                                    registry=registry)
        self.m_fsync = Histogram("na64_recorder_fsync_seconds",
                                 "Time to write and fsync a spill end", registry=registry,
                                 buckets=(1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3))
        self.m_file = Gauge("na64_recorder_file", "Counts of the run file being written",
                            ["what"], registry=registry)
        self.m_run = Gauge("na64_recorder_run", "Run being recorded (0: none)",
                           registry=registry)
        self.m_replay = Gauge("na64_recorder_replay", "1 while recording a replay",
                              registry=registry)
        self.rec = Recording(d, max_bytes=max_bytes, raw=raw, spill_timeout_s=spill_timeout_s,
                             on_fsync=self.m_fsync.observe)
        self.ctx = ctx or context()
        refusals = Refusals("recorder",
                            on_refused=lambda reason, _: self.m_errors.labels(reason).inc())
        self.inlet = ZmqInlet(self.ctx, listen, refusals, max_message_bytes=max_message_bytes,
                              hook=secure)
        self.endpoint = self.inlet.endpoint
        self.last_closed: dict[str, Any] | None = None
        #: the CURVE authenticator of this process, when configured (daq.curve): stopped here
        self.authenticator: Any = None

    def loops(self) -> dict[str, Loop]:
        return {"input": self._input}

    def _take(self) -> None:
        """Take what is there (up to 256 messages), then hand it to the OS in one flush."""
        for _ in range(256):
            rx = self.inlet.take()
            if rx is None:
                break
            self._handle(rx)
        self.rec.flush()

    async def _drained(self, rx: Received) -> bool:
        """One message taken by the drain at stop (never the end: workers send eos each)."""
        self._handle(rx)
        return False

    def _handle(self, rx: Received) -> None:
        msg = self.inlet.refusals.decode(rx)
        if msg is None:
            return
        src = "replay" if (self.rec.replay or msg.replay) else "live"
        try:
            self._account(src, lambda: self.rec.handle(msg, time.monotonic()))
        except DaqError:
            self.m_write_errors.inc()
            return
        if msg.kind is Kind.ACCEPTED:
            self.m_events.labels(src).inc(msg.count)

    def _account(self, src: str, step: Callable[[], object]) -> None:
        """Run one core step and export what it changed."""
        r = self.rec
        files, bad, recs, nbytes = len(r.files), r.incomplete_spills, r.total_records, \
            r.total_bytes
        ignored, resumed, copies = r.ignored, r.resumed, r.end_copies
        step()
        self.m_ignored.inc(r.ignored - ignored)
        self.m_end_copies.inc(r.end_copies - copies)
        self.m_resumed.inc(r.resumed - resumed)
        self.m_records.labels(src).inc(r.total_records - recs)
        self.m_bytes.labels(src).inc(r.total_bytes - nbytes)
        self.m_files.labels(src).inc(len(self.rec.files) - files)
        self.m_incomplete.inc(self.rec.incomplete_spills - bad)
        self._gauges()
        while r.closed_log:  # run control answers a stop once the run's file is closed
            closed = r.closed_log.pop(0)
            self.last_closed = closed
            if self.agent is not None:
                self.agent.notify("run_closed", **closed)

    def status(self) -> dict[str, Any]:
        r = self.rec
        w = r.writer
        return {"recording": None if w is None else {"run": r.run, "replay": r.replay,
                                                     "file": str(w.path),
                                                     "events": r.counts.events,
                                                     "spills": r.counts.spills},
                "files_closed": len(r.files), "last_closed": self.last_closed}

    def _gauges(self) -> None:
        c = self.rec.counts
        for what, v in (("records", c.records), ("bytes", c.bytes), ("events", c.events),
                        ("spills", c.spills)):
            self.m_file.labels(what).set(v)
        self.m_run.set(self.rec.run if self.rec.writer is not None else 0)
        self.m_replay.set(float(self.rec.replay and self.rec.writer is not None))

    async def _input(self) -> None:
        try:
            while not self.stopping.is_set():
                if await self.inlet.wait(0.1):
                    self._take()
                src = "replay" if self.rec.replay else "live"
                self._account(src, lambda: self.rec.poll(time.monotonic()))
            # stopping: what the workers still send (their drain) goes into the file too
            await drain(self.inlet, self._drained, quiet_s=_QUIET_S,
                        timeout_s=self.drain_timeout_s)
        finally:
            src = "replay" if self.rec.replay else "live"
            self._account(src, self.rec.close)
            self.inlet.close()
            if self.authenticator is not None:
                await self.authenticator.aclose()


def main(argv: list[str] | None = None) -> int:
    """`python -m daq.recorder --listen ENDPOINT --dir DIR`: record until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="python -m daq.recorder", description=__doc__)
    p.add_argument("--listen", required=True, help="endpoint to bind (PULL)")
    p.add_argument("--dir", required=True, type=Path, help="directory for run files")
    p.add_argument("--max-bytes", type=int, default=None, help="rotate files at this size")
    p.add_argument("--raw", action="store_true", help="also record raw slices")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help="refuse larger messages (daq.inlet; default %(default)s)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(_serve(args))
    finally:
        close_transport()


async def _serve(args: argparse.Namespace) -> int:
    from daq.metrics import MetricsServer
    from daq.service import ignore_stop_signals, on_stop_signals

    reg = CollectorRegistry()
    svc = RecorderService(args.dir, reg, listen=args.listen, max_bytes=args.max_bytes,
                          raw=args.raw, max_message_bytes=args.max_message_bytes)
    metrics = MetricsServer(reg, port=args.metrics_port) if args.metrics_port is not None \
        else None
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, svc.stop)
    print(f"recorder listening on {svc.endpoint}", flush=True)
    try:
        async with svc:
            await svc.wait()
    finally:
        ignore_stop_signals(loop)
        if metrics is not None:
            metrics.close()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
