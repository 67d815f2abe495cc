"""What the monitor keeps over many runs: bounded histories, no per-run label sets.

A standing monitor takes run after run with the same process; whatever it keeps per run or
per spill must stop growing at a documented bound (docs/performance.md, "Memory over
consecutive runs"). The monitor's core (MonitorService.handle, without its socket) is fed
many short runs, and what it retains is counted, not its RSS.
"""

from __future__ import annotations

import numpy as np
from monitor_synth import spill_messages
from prometheus_client import CollectorRegistry

from daq.wire import Kind, Message
from monitors.config import MonitorConfig
from monitors.metrics import SOURCES
from monitors.service import MonitorService

SPILLS = 8  # per run: 70 runs close 560 spills, past every bound below


class _Feed:
    """Runs of SPILLS one-slice spills, fed to `svc` one after the other."""

    def __init__(self, svc: MonitorService) -> None:
        self.svc = svc
        self.rng = np.random.default_rng(16)
        self.seq: dict[str, int] = {}
        self.run = 0

    def runs(self, n: int) -> None:
        for _ in range(n):
            self.run += 1
            self._marker(Kind.RUN_START)
            for spill in range(1, SPILLS + 1):
                msgs, _ = spill_messages(self.rng, run=self.run, spill=spill, slices=1,
                                         slice_events=50, seq0=self.seq)
                for m in msgs:
                    self.svc.handle(m)
            self._marker(Kind.RUN_STOP)

    def _marker(self, kind: Kind) -> None:
        self.seq["trigger-0"] = self.seq.get("trigger-0", -1) + 1
        meta = {"reason": "stopped"} if kind is Kind.RUN_STOP else {}
        self.svc.handle(Message(kind, run=self.run, seq=self.seq["trigger-0"], src="trigger-0",
                                meta=meta))


def _retained(svc: MonitorService, reg: CollectorRegistry) -> dict[str, int]:
    ra = svc.analyses["live"]
    return {
        "spill summaries": len(svc.summaries),
        "run summaries": len(svc.run_summaries),
        "spill close times": sum(len(d) for d in svc.metrics.closed_at.values()),
        "metric series": sum(len(fam.samples) for fam in reg.collect()),
        "analyses": len(svc.analyses),
        "spectra of closed spills": len(ra.spectra),
        "open spills": ra.open_spills,
        "per-source run state": len(svc.metrics.run_eot) + len(svc.metrics.run_started),
    }


def test_retained_state_does_not_grow_with_the_number_of_runs() -> None:
    reg = CollectorRegistry()
    svc = MonitorService("inproc://retained", config=MonitorConfig(), registry=reg,
                         clock=lambda: 1000.0, keep_summaries=16)
    feed = _Feed(svc)
    feed.runs(70)
    after_70 = _retained(svc, reg)
    feed.runs(70)
    after_140 = _retained(svc, reg)
    assert len(svc.run_summaries) == 64 and svc.run_summaries[-1]["run"] == 140
    assert svc.summaries[-1].run == 140 and svc.summaries[-1].spill == SPILLS
    # the bounds themselves: every run and spill counted, the newest kept
    assert after_140["spill summaries"] < 2 * 16
    assert after_140["spill close times"] == 512
    assert after_140["spectra of closed spills"] == 0  # handed to /metrics as each closes
    assert after_140["open spills"] == 0
    assert after_140["analyses"] == 1 and after_140["per-source run state"] == 2
    # the label sets: run and spill numbers are values, never labels
    assert after_140["metric series"] == after_70["metric series"]
    for name in ("run summaries", "spill close times", "analyses", "per-source run state"):
        assert after_140[name] == after_70[name], name
    # and every spill went through /metrics
    total = sum(x.value for fam in reg.collect() if fam.name == "na64_spills"
                for x in fam.samples if x.name == "na64_spills_total")
    assert total == 140 * SPILLS
    assert set(SOURCES) >= set(svc.metrics.run_eot)
