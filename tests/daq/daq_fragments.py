"""Message makers for the daq tests: board fragments per docs/dataflow.md, made directly."""

from __future__ import annotations

import numpy as np

from daq import hits
from daq.geometry import Geometry
from daq.wire import Kind, Message


class Board:
    """One front end's stream: numbers its messages with `seq` and cuts fixed slices.

    Feature mode is zero-suppressed (about a third of the channels read out); waveform mode
    sends full waveforms, or zero-suppressed ones with `zero_suppress`.
    """

    def __init__(self, geom: Geometry, name: str, *, run: int = 1, mode: str = "feature",
                 seed: int = 0, zero_suppress: bool = False) -> None:
        self.geom, self.name, self.run, self.mode = geom, name, run, mode
        self.zero_suppress = zero_suppress
        self.nch = geom.n_channels(name)
        self.seq = 0
        self.rng = np.random.default_rng(seed)

    def _msg(self, kind: Kind, spill: int, **kw: object) -> Message:
        m = Message(kind=kind, run=self.run, spill=spill, seq=self.seq, src=self.name,
                    board=self.name, **kw)  # type: ignore[arg-type]
        self.seq += 1
        return m

    def spill_start(self, spill: int) -> Message:
        return self._msg(Kind.SPILL_START, spill, meta={"t0_ns": spill * 1000})

    def spill_end(self, spill: int, events: int) -> Message:
        scalers = ({"S1": events, "S2": events, "S3": events, "V1": 0, "beam": events}
                   if self.name == "BEAM" else {"events": events})
        return self._msg(Kind.SPILL_END, spill, meta={"events": events, "scalers": scalers})

    def slice(self, spill: int, first: int, count: int) -> Message:
        ev = np.arange(first, first + count, dtype=np.int64)
        arrays: dict[str, np.ndarray] = {"ts": ev * 800 + spill}
        meta: dict[str, object] = {"mode": self.mode}
        mask = self.rng.random((count, self.nch)) < 0.3
        if self.mode == "feature":
            amp = self.rng.integers(6, 3000, (count, self.nch), dtype=np.int16)
            nhit, h = hits.sparsify(mask, {"hit_amp": amp,
                                           "hit_t": np.zeros((count, self.nch), np.int16),
                                           "hit_np": np.ones((count, self.nch), np.uint8)})
            arrays.update(nhit=nhit, **h)
            meta["zs_adc"] = 6.0
        else:
            s = self.geom.detector.samples
            wave = self.rng.integers(390, 420, (count, s, self.nch), dtype=np.int16)
            if self.zero_suppress:
                nhit, h = hits.sparsify(mask, {"hit_wave": wave})
                arrays.update(nhit=nhit, **h)
                meta["zs_adc"] = 6.0
            else:
                arrays["wave"] = wave
        return self._msg(Kind.SLICE, spill, first=first, count=count, arrays=arrays,
                         meta=meta)

    def spill(self, spill: int, events: int, slice_events: int) -> list[Message]:
        out = [self.spill_start(spill)]
        for first in range(0, events, slice_events):
            out.append(self.slice(spill, first, min(slice_events, events - first)))
        out.append(self.spill_end(spill, events))
        return out


class Worker:
    """A trigger worker's output stream as the recorder sees it (ACCEPTED + markers)."""

    def __init__(self, name: str = "trigger-0", *, run: int = 1, seed: int = 0,
                 replay: bool = False) -> None:
        self.name, self.run, self.seq, self.replay = name, run, 0, replay
        self.rng = np.random.default_rng(seed)

    def msg(self, kind: Kind, spill: int = 0, **kw: object) -> Message:
        m = Message(kind=kind, run=self.run, spill=spill, seq=self.seq, src=self.name,
                    replay=self.replay, **kw)  # type: ignore[arg-type]
        self.seq += 1
        return m

    def run_start(self) -> Message:
        return self.msg(Kind.RUN_START, meta={"config": {"beam_gev": 100}, "geometry": "g",
                                              "calibration": "c", "mode": "feature"})

    def accepted(self, spill: int, index: int, slice_events: int = 64) -> Message:
        keep = np.sort(self.rng.choice(slice_events, 5, replace=False)).astype(np.uint32)
        first = index * slice_events
        return self.msg(Kind.ACCEPTED, spill, board="ALL", first=first, count=len(keep),
                        arrays={"event": keep + first,
                                "e_ecal": self.rng.random(len(keep)).astype(np.float32),
                                "bits": np.ones(len(keep), np.uint8)},
                        meta={"slice_index": index, "slice_count": slice_events, "cfg": "h",
                              "mode": "feature", "calib": "c"})

    def spill(self, spill: int, slices: int) -> list[Message]:
        """spill_start, the accepted messages, spill_end announcing `slices`."""
        out = [self.msg(Kind.SPILL_START, spill, meta={"t0_ns": 0, "cfg": "h"})]
        out += [self.accepted(spill, i) for i in range(slices)]
        out.append(self.msg(Kind.SPILL_END, spill, meta={
            "slices": slices, "events": slices * 64, "incomplete": {}, "shed": 0, "gaps": {},
            "scalers": {}}))
        return out
