"""A simulated run file, through the real builder and trigger (trigger.analyze), summarised."""

from __future__ import annotations

from pathlib import Path

from daq.cli import main
from monitors.analysis import summarize
from trigger.analyze import iter_features


def test_summary_of_a_simulated_run_file(tmp_path: Path) -> None:
    raw = tmp_path / "run.raw"
    assert main(["simulate", "--out", str(raw), "--spills", "2", "--generated-s", "0.004",
                 "--seed", "8", "--run", "12", "--quiet"]) == 0
    out = summarize(iter_features(raw))
    assert out["run"] == 12 and out["source"] == "live"
    spills = out["spills"]
    assert [s["closed"] for s in spills] == ["complete", "complete"]
    for s in spills:
        assert s["events"] == s["scalers"]["beam"]  # every beam trigger reached the monitor
        assert s["incomplete_events"] == 0 and s["live_time_ratio"] == 1.0
        assert s["veto_efficiency"]["n"] > 0.9 * s["events"]
        assert 0 < s["eot"] <= s["events"]
    tot = out["totals"]
    assert tot["events"] == sum(s["events"] for s in spills)
    assert tot["refused"] == {} and tot["stream_gaps"] == {} and tot["forced_spills"] == 0
    # 6e6 e-/spill: the published efficiencies, within a few sigma of these few 10^3 events
    assert abs(tot["veto_efficiency"]["value"] - 0.939) < 4 * (
        tot["veto_efficiency"]["high"] - tot["veto_efficiency"]["low"]) / 2
