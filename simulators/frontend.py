"""Front-end board emulation, sans I/O: the wire messages of every board stream of a run.

`FrontEnds.run()` yields `Emission`s (stream name, message, emission time) in the order
the boards would send them: per board a `run_start`, then per spill `spill_start`, the
slices, `spill_end` with scalers, and finally `eos`. Board faults (a board that stops,
zero-suppressed fragments) act before sequence numbers are given, because the board
itself sent less; transport faults (duplicates, reordering, corrupted frames) act after.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from daq.markers import RunStart, RunStop, SliceMeta, SpillEnd, SpillStart
from daq.wire import Kind, Message, encode
from simulators.generator import Simulator, Slice, SpillPlan

TRUTH = "TRUTH"
TRUTH_SRC = "truth"


@dataclass
class Emission:
    """One message of one stream and when (ns since run start) the board would send it."""

    src: str
    msg: Message
    t_ns: int
    corrupt: bool = False  # flip bytes of an array frame after encoding (CRC will fail)

    def frames(self) -> list[Any]:
        """Encoded frames, with the corruption applied when asked."""
        frames = encode(self.msg)
        if self.corrupt and len(frames) > 1:
            k = int(np.argmax([memoryview(f).nbytes for f in frames[1:]])) + 1
            bad = bytearray(memoryview(frames[k]).cast("B"))
            if bad:
                bad[len(bad) // 2] ^= 0xFF
                frames[k] = bytes(bad)
        return frames


class FrontEnds:
    """All board streams (and the truth stream) of one simulated run."""

    def __init__(self, sim: Simulator, *, spills: int, truth: bool = False) -> None:
        self.sim = sim
        self.spills = spills
        self.truth = truth
        self.boards = list(sim.board_names)
        self._seq: dict[str, int] = {}
        self._rng = np.random.default_rng([sim.faults.seed, sim.cfg.seed])

    @property
    def streams(self) -> list[str]:
        return self.boards + ([TRUTH] if self.truth else [])

    def _stamp(self, src: str, msg: Message) -> Message:
        msg.seq = self._seq.get(src, 0)
        self._seq[src] = msg.seq + 1
        return msg

    def _msg(self, src: str, kind: Kind, spill: int = 0, **kw: Any) -> Message:
        name = TRUTH_SRC if src == TRUTH else src
        return Message(kind=kind, run=self.sim.cfg.run, spill=spill, src=name, board=src, **kw)

    def run_start(self) -> list[Emission]:
        sim = self.sim
        meta = RunStart(config=sim.cfg.model_dump(mode="json"), geometry=sim.geom.hash,
                        calibration=sim.calib.hash, mode=sim.cfg.mode,
                        faults=sim.faults.model_dump(mode="json")).to_meta()
        return [Emission(s, self._stamp(s, self._msg(s, Kind.RUN_START, meta=meta)), 0)
                for s in self.streams]

    def withdraw(self, em: Emission) -> None:
        """`em` was taken from `run()` but will never be sent (the stream was stopped at
        it): its sequence number goes to the next message of its stream, the end of stream,
        so that receivers count no lost message where nothing was lost."""
        if self._seq.get(em.src) == em.msg.seq + 1:
            self._seq[em.src] = em.msg.seq

    def run_stop(self, t_ns: int, reason: str) -> list[Emission]:
        """Every board ends the run (run control's stop, or its max_spills): the builder
        closes the run once every board's run_stop is in."""
        meta = RunStop(reason).to_meta()
        return [Emission(s, self._stamp(s, self._msg(s, Kind.RUN_STOP, meta=dict(meta))), t_ns)
                for s in self.streams]

    def eos(self, t_ns: int) -> list[Emission]:
        return [Emission(s, self._stamp(s, self._msg(s, Kind.END_OF_STREAM)), t_ns)
                for s in self.streams]

    def run(self, *, end: str = "eos") -> Iterator[Emission]:
        """Every emission of the run, in sending order; the streams end with `end`: "eos"
        (a one-run stream) or "run_stop" (front ends that stay up for the next run)."""
        yield from self.run_start()
        t_end = 0
        for spill in range(self.spills):
            plan = self.sim.plan(spill)
            yield from self.spill(plan, self.sim.slices(plan))
            t_end = plan.t0_ns + round(self.sim.cfg.gen_s * 1e9)
        if end == "run_stop":
            yield from self.run_stop(t_end, f"{self.spills} spills taken")
        else:
            yield from self.eos(t_end)

    def spill(self, plan: SpillPlan, slices: Iterable[Slice]) -> Iterator[Emission]:
        """The emissions of one spill: board behaviour, sequence numbers, transport faults."""
        held: dict[str, Emission] = {}  # a slice waiting to be sent after the next (reorder)
        for em in self._board_messages(plan, slices):
            em.msg = self._stamp(em.src, em.msg)
            yield from self._transport(em, held)
        for em in held.values():
            yield em

    def _transport(self, em: Emission, held: dict[str, Emission]) -> Iterator[Emission]:
        f = self.sim.faults
        if em.src == TRUTH:
            yield em
            return
        if em.msg.kind is not Kind.SLICE:
            if em.src in held:
                yield held.pop(em.src)
            yield em
            return
        if f.corrupt_rate and self._rng.random() < f.corrupt_rate:
            em.corrupt = True
        out = [em]
        if f.duplicate_rate and self._rng.random() < f.duplicate_rate:
            out.append(replace(em))
        if em.src in held:
            out.append(held.pop(em.src))
        elif f.reorder_rate and self._rng.random() < f.reorder_rate:
            held[em.src] = out.pop(0)
        yield from out

    def _board_messages(self, plan: SpillPlan, slices: Iterable[Slice]) -> Iterator[Emission]:
        f = self.sim.faults
        t0 = plan.t0_ns
        stop_after = (round(f.stop_fraction * plan.n_slices)
                      if f.stop_board is not None and plan.spill == f.stop_spill else None)
        sent = dict.fromkeys(self.streams, 0)
        slice_meta = SliceMeta(mode=self.sim.cfg.mode, zs_adc=self.sim.cfg.zs_adc
                               if self.sim.cfg.suppresses else None).to_meta()
        start = SpillStart(t0).to_meta()
        for s in self.streams:
            yield Emission(s, self._msg(s, Kind.SPILL_START, plan.spill, meta=dict(start)), t0)
        for sl in slices:
            t_ns = t0 + int(sl.ts[-1])
            for b in self.boards:
                if stop_after is not None and b == f.stop_board and sl.index >= stop_after:
                    continue
                arrays = {"ts": sl.ts, **sl.boards[b]}
                if (b == f.empty_board and f.empty_rate
                        and self._rng.random() < f.empty_rate):
                    arrays = {"ts": sl.ts}  # zero-suppressed: no channel read anything
                sent[b] += sl.count
                yield Emission(b, self._msg(b, Kind.SLICE, plan.spill, first=sl.first,
                                            count=sl.count, arrays=arrays,
                                            meta=dict(slice_meta)), t_ns)
            if self.truth:
                sent[TRUTH] += sl.count
                yield Emission(TRUTH, self._msg(TRUTH, Kind.SLICE, plan.spill, first=sl.first,
                                                count=sl.count, arrays=dict(sl.truth),
                                                meta=SliceMeta(
                                                    slice_index=sl.index,
                                                    ecal_gain=self.sim.ecal_gain(plan.spill),
                                                ).to_meta()), t_ns)
        t_end = t0 + round(self.sim.cfg.gen_s * 1e9)
        for s in self.streams:
            if stop_after is not None and s == f.stop_board:
                continue  # a board that stopped sends no spill_end either
            end = SpillEnd(sent[s], scalers=self._scalers(s, plan))
            yield Emission(s, self._msg(s, Kind.SPILL_END, plan.spill, meta=end.to_meta()),
                           t_end)

    def _scalers(self, board: str, plan: SpillPlan) -> dict[str, int]:
        if board != "BEAM":
            return {"events": plan.events}
        return {"S1": plan.events, "S2": plan.events, "S3": plan.events,
                "V1": self.sim.v1_count(plan), "beam": plan.events}
