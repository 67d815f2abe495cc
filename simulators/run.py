"""Whole simulated runs: to a raw (pre-trigger) run file, or streamed to an endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daq.geometry import Calibration, Geometry
from daq.runfile import RunFileWriter
from daq.transport import close_transport
from daq.wire import Kind, encode, pack_frames
from simulators.config import FaultConfig, SimConfig
from simulators.errors import SimulatorError
from simulators.frontend import TRUTH, Emission, FrontEnds
from simulators.generator import Simulator

Progress = Callable[[Emission], object]
_REC = 8  # a run file record's length and CRC before its payload


@dataclass
class RunSummary:
    """What a simulated run sent: messages and events per stream, files written."""

    messages: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def note(self, em: Emission) -> None:
        self.messages[em.src] = self.messages.get(em.src, 0) + 1
        if em.msg.kind is Kind.SLICE:
            self.events[em.src] = self.events.get(em.src, 0) + em.msg.count


def _writer(path: str | Path, sim: Simulator) -> RunFileWriter:
    return RunFileWriter(path, run=sim.cfg.run,
                         config={"simulation": sim.cfg.model_dump(mode="json"),
                                 "faults": sim.faults.model_dump(mode="json")},
                         geometry_hash=sim.geom.hash, calibration_hash=sim.calib.hash)


@dataclass(frozen=True)
class SizeEstimate:
    """What a simulated run will write, measured on one slice before it starts."""

    events: float  # expected events per board, all spills (Poisson mean)
    bytes_per_event: float  # of the board streams, as run file records
    truth_bytes_per_event: float

    def total(self, truth: bool = False) -> float:
        return self.events * (self.bytes_per_event + (self.truth_bytes_per_event if truth
                                                       else 0.0))


def estimate(cfg: SimConfig, geom: Geometry, calib: Calibration, faults: FaultConfig,
             spills: int) -> SizeEstimate:
    """The expected size of a run: its expected events, and the bytes per event of one
    slice of it simulated here (the same settings, a fraction of a spill)."""
    per_spill = cfg.intensity * cfg.gen_s / cfg.spill_length_s
    events = sum(per_spill * faults.intensity_factor(s) for s in range(spills))
    sample_s = min(cfg.gen_s, cfg.spill_length_s * cfg.slice_events / cfg.intensity)
    probe = SimConfig.parse({**cfg.model_dump(mode="json"), "generated_s": sample_s})
    fe = FrontEnds(Simulator(probe, geom, calib), spills=1, truth=True)
    sizes = {"boards": 0, TRUTH: 0}
    n = 0
    for em in fe.run():
        if em.msg.kind is Kind.SLICE:
            size = _REC + sum(memoryview(f).nbytes for f in pack_frames(encode(em.msg)))
            sizes[TRUTH if em.src == TRUTH else "boards"] += size
            n += em.msg.count if em.src == fe.boards[0] else 0
    n = max(n, 1)
    return SizeEstimate(events, sizes["boards"] / n, sizes[TRUTH] / n)


def build(cfg: SimConfig, geom: Geometry, calib: Calibration, faults: FaultConfig,
          spills: int, truth: bool) -> FrontEnds:
    return FrontEnds(Simulator(cfg, geom, calib, faults), spills=spills, truth=truth)


def to_file(fe: FrontEnds, out: str | Path, truth: str | Path | None = None,
            progress: Progress | None = None) -> RunSummary:
    """Write every board stream to `out` (and the truth stream to `truth`), as run files.

    A corrupted frame cannot be written as a valid record, so the corruption fault needs
    a stream (`to_endpoint`).
    """
    if fe.sim.faults.corrupt_rate:
        raise SimulatorError("the corrupt fault acts on the wire; use --to ENDPOINT, not --out")
    summary = RunSummary()
    with contextlib.ExitStack() as stack:
        w = stack.enter_context(_writer(out, fe.sim))
        tw = stack.enter_context(_writer(truth, fe.sim)) if truth is not None else None
        for em in _emissions(fe):
            if em.src == TRUTH:
                if tw is not None:
                    tw.write(em.msg)
            else:
                w.write(em.msg)
            summary.note(em)
            if progress is not None:
                progress(em)
        summary.files = w.close() + (tw.close() if tw is not None else [])
    return summary


def _emissions(fe: FrontEnds) -> Iterator[Emission]:
    return fe.run()


def to_endpoint(fe: FrontEnds, endpoint: str, *, pace: str = "max", factor: float = 1.0,
                truth: str | Path | None = None, progress: Progress | None = None
                ) -> RunSummary:
    """Stream a run to `endpoint` (the builder's PULL), one PUSH per board; blocks until sent."""
    from simulators.service import FrontEnd  # the asyncio shell, only when streaming

    summary = RunSummary()

    def emitted(em: Emission) -> None:
        summary.note(em)
        if progress is not None:
            progress(em)

    async def main() -> None:
        with contextlib.ExitStack() as stack:
            tw = stack.enter_context(_writer(truth, fe.sim)) if truth is not None else None
            async with FrontEnd(fe, endpoint, pace=pace, factor=factor,
                                truth_sink=tw.write if tw is not None else None,
                                on_emit=emitted) as svc:
                await svc.wait()
            if tw is not None:
                summary.files = tw.close()

    try:
        asyncio.run(main())
    finally:
        close_transport()  # the last zero-copy frames must leave before exit
    return summary
