"""An operator's stop (the demo's Ctrl-C) in the middle of a spill: the front ends finish
the spill under way, so no spill is cut and no incomplete_high is raised for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daq.app import LocalStack
from daq.stack import StackConfig

pytestmark = pytest.mark.slow


@pytest.mark.asyncio
async def test_a_stop_mid_spill_raises_no_alarm_and_cuts_no_spill(tmp_path: Path) -> None:
    cfg = StackConfig.parse({
        "run_dir": str(tmp_path), "workers": 2,
        "metrics": dict.fromkeys(("frontend", "builder", "recorder", "monitor", "control",
                                  "trigger"), 0),
        "simulator": {"spills": 20, "pace": "factor", "factor": 8.0,
                      "sim": {"intensity": 6e6, "generated_s": 0.05, "seed": 3}},
    }).inproc("midspill")
    async with LocalStack(cfg, metrics=False) as stack:
        await stack.start_run(spills=20)
        fe = stack.frontend
        while fe.spill < 1:  # spill 1 under way (2.1 s cycles at 8x)
            await asyncio.sleep(0.02)
        await stack.stop_run("Ctrl-C")
        await stack.wait_run_closed()
        mon = stack.monitor
        sums = [s for s in mon.summaries if s.run == stack.run]
        assert 2 <= len(sums) < 20
        assert all(s.closed == "complete" and s.incomplete_events == 0 for s in sums)
        assert mon.alarms["live"].times_raised["incomplete_high"] == 0
        assert not any(mon.alarms["live"].raised.values())
