"""Simulator + trigger features for the truth tests: features messages and per-event truth."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from daq.config import content_hash
from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from daq.wire import Kind, Message
from simulators.config import SimConfig
from simulators.generator import Simulator
from trigger.config import TriggerConfig
from trigger.processor import SliceProcessor, Stamper


@cache
def detector() -> tuple[Geometry, Calibration]:
    g = load_geometry()
    return g, load_calibration(g)


def simulate(*, intensity: float, generated_s: float, seed: int, spills: int = 1,
             run: int = 1, slice_events: int = 4096, hadron: float = 0.01, muon: float = 0.002,
             mode: str = "feature", geometry: Geometry | None = None,
             trigger: TriggerConfig | None = None, **sim: Any
             ) -> tuple[list[Message], dict[str, np.ndarray], SimConfig]:
    """Features messages (via the trigger's processor) of `spills` simulated spills, each
    followed by the builder's spill_end, and the concatenated truth of every event; `sim`:
    any other SimConfig setting (e.g. ecal_gain_scale). `geometry`: another than the
    default's (the same channels: the default calibration serves it), for both the
    simulator and the trigger; `trigger`: the trigger's configuration (default: the
    default's)."""
    geom, cal = detector()
    geom = geom if geometry is None else geometry
    cfg = SimConfig.parse({"intensity": intensity, "generated_s": generated_s, "seed": seed,
                           "slice_events": slice_events, "hadron_fraction": hadron,
                           "muon_fraction": muon, "run": run, "mode": mode, **sim})
    sim = Simulator(cfg, geom, cal)
    proc = SliceProcessor(geom, cal)
    tc = (TriggerConfig() if trigger is None else trigger).model_dump(mode="json")
    meta = {"mode": mode, "cfg": content_hash(tc), "trigger_config": tc,
            "shadow_config": None, "calib": cal.hash}
    stamp = Stamper("trigger-0")
    msgs: list[Message] = []
    truth: dict[str, list[np.ndarray]] = {}
    for spill in range(1, spills + 1):
        plan = sim.plan(spill)
        n = 0
        for s in sim.slices(plan):
            arrays = {"ts": s.ts, "missing": np.zeros(s.count, np.uint8)}
            for b, d in s.boards.items():
                arrays.update({f"{b}.{k}": v for k, v in d.items()})
            built = Message(Kind.SLICE, run=run, spill=spill, src="builder", board="ALL",
                            first=s.first, count=s.count, arrays=arrays,
                            meta={**meta, "slice_index": s.index})
            msgs.append(stamp(proc.process(built).features))
            for k, v in s.truth.items():
                truth.setdefault(k, []).append(v)
            n += 1
        msgs.append(stamp(Message(Kind.SPILL_END, run=run, spill=spill, src="trigger-0",
                                  meta={"slices": n, "events": plan.events, "shed": 0,
                                        "incomplete": {}, "gaps": {}, "scalers": {}})))
    return msgs, {k: np.concatenate(v) for k, v in truth.items()}, cfg
