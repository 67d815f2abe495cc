"""The ECAL energy scale and EOT with a stopped board at 6e6 e-/spill against injected truth.

    python scripts/stopped_board.py              # the scale rows and the stopped boards
    python scripts/stopped_board.py --recorded   # and the recorded-file row (a LocalStack run)

Runs the simulations of the tests that check these figures, with their seeds, and prints
what they measure: tests/monitors/test_monitor_calibration.py (gains and cell drifts),
tests/monitors/test_monitor_eot_stop.py (a board stopped at half spill 1, through
`na64daq analyze`'s path) and, with --recorded, tests/analysis/test_analyze_eot_stop.py (a
run of the standing system with `prescale_beam` 10 and its recorded file).
The figures of docs/monitors.md ("Energy scale and EOT with a stopped board").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daq.analysis.reanalyze import analyze_file
from daq.cli import main as cli
from daq.geometry import load_calibration, load_geometry
from monitors.alarms import Alarms
from monitors.analysis import analyze
from monitors.config import MonitorConfig
from monitors.summary import SpillSummary
from simulators.config import FaultConfig, SimConfig
from simulators.run import build, to_file
from tests.analysis import test_analyze_eot_stop as recorded
from tests.monitors.monitor_truth import simulate
from tests.monitors.test_monitor_eot_stop import _truth as file_truth

SIM = {"intensity": 6e6, "generated_s": 0.05, "seed": 3}
STOP_SPILL, FRACTION = 1, 0.5


def _summaries(cfg: MonitorConfig, spills: int = 1, **sim: float | str
               ) -> list[SpillSummary]:
    msgs, _, _ = simulate(**SIM, spills=spills, **sim)  # type: ignore[arg-type]
    return analyze(msgs, cfg).summaries


def _scales(label: str, spills: int, **sim: float | str) -> None:
    """One gain row: each spill's scale and error, and the spills that raised an alarm."""
    sums = _summaries(MonitorConfig(), spills, **sim)
    alarms = Alarms(MonitorConfig().alarms)
    raised = [f"{t.name} at spill {s.spill}" for s in sums for t in alarms.on_spill(s)
              if str(t.state) == "raised"]
    shown = ", ".join(f"{s.ecal_scale.value:.4f} +- {s.ecal_scale.error:.4f}"
                      for s in sums if s.ecal_scale is not None)
    print(f"{label}: {shown}; alarms: {', '.join(raised) or 'none'}")


def _cell_drift(cell: str, ref: dict[str, float], ref_err: dict[str, float]) -> None:
    """A cell at 0.9: the global scale, that cell's scale, and the other cells' range and
    largest pull from 1 (errors of this spill and of the reference, as the test)."""
    cfg = MonitorConfig(calib_cell_reference=ref)
    [s] = _summaries(cfg, ecal_gain_drift=-0.1, ecal_drift_cell=cell)
    assert s.ecal_cells is not None and s.ecal_scale is not None
    sigma, others = {}, []
    for k, c in s.ecal_cells.items():
        assert c.scale is not None and c.scale_error is not None
        sigma[k] = math.hypot(c.scale_error, c.scale * ref_err[k] / ref[k])
        if k != cell:
            others.append((c.scale, abs(c.scale - 1) / sigma[k]))
    mine = s.ecal_cells[cell]
    print(f"{cell} at 0.9: global {s.ecal_scale.value:.4f} +- {s.ecal_scale.error:.4f}; "
          f"cell {mine.scale:.3f} +- {sigma[cell]:.3f}; the {len(others)} others "
          f"{min(v for v, _ in others):.3f}-{max(v for v, _ in others):.3f} "
          f"(largest pull from 1: {max(p for _, p in others):.1f} errors)")


def _stopped(board: str, tmp: Path) -> None:
    """A board stopped at half spill 1, through `na64daq analyze`'s path."""
    d = tmp / board
    d.mkdir()
    geom = load_geometry()
    faults = FaultConfig.parse({"stop_board": board, "stop_spill": STOP_SPILL,
                                "stop_fraction": FRACTION})
    to_file(build(SimConfig.parse(SIM), geom, load_calibration(geom), faults, spills=2,
                  truth=True), d / "raw.na64", truth=d / "truth.na64")
    spills = {x["spill"]: x for x in analyze_file(d / "raw.na64")["spills"]}
    truth = file_truth(d / "truth.na64")
    below = ", ".join(f"{x['eot'] / sum(truth[k]['no_v1']) - 1:+.2%}" for k, x in spills.items())
    s, t = spills[STOP_SPILL], truth[STOP_SPILL]
    alarms = Alarms(MonitorConfig().alarms)
    fields = SpillSummary.model_fields
    raised = [f"{a.name} at spill {k}" for k, x in spills.items()
              for a in alarms.on_spill(SpillSummary.model_validate(
                  {f: v for f, v in x.items() if f in fields}))
              if str(a.state) == "raised"]
    n, k = sum(t["events"]), sum(t["no_v1"])
    sent = sum(t["events"][:round(FRACTION * len(t["events"]))])
    live = round(s["live_time_ratio"] * n)
    p = k / n
    sigma = n * math.sqrt(p * (1 - p) / live * (1 - live / n))
    print(f"{board} stops at half spill {STOP_SPILL}: truth {k} particles without V1, "
          f"live {sent}/{n}; EOT {s['eot']:.0f}, live "
          f"{s['live_time_ratio']:.4f} (binomial sigma {sigma:.0f}); EOT / truth - 1 by "
          f"spill: {below}; alarms: {', '.join(raised) or 'none'}")


def _recorded(board: str, tmp: Path) -> None:
    """The standing system with `prescale_beam` 10, BEAM or ECAL stopped: the live monitor
    and `na64daq analyze` of the recorder's file against the truth drawn again."""
    cfg = recorded._config(tmp / f"rec-{board}", board)
    run, path, live = asyncio.run(recorded._record(cfg))
    t = recorded._truth(cfg, run)[STOP_SPILL]
    out = StringIO()
    with redirect_stdout(out):
        assert cli(["analyze", str(path), "--json"]) == 0
    e = json.loads(out.getvalue())["spills"][STOP_SPILL]["eot"]
    mon = live[STOP_SPILL]
    print(f"recorded, {board} stops at half spill {STOP_SPILL}: truth {t['no_v1']} particles "
          f"without V1; live monitor: EOT {mon.eot:.0f}, live {mon.live_time_ratio:.4f}; "
          f"analyze: EOT {e['value']:.0f} (68 %: {e['low']:.0f}-{e['high']:.0f}; "
          f"{e['beam_triggers']} beam-bit events x {e['prescale']} / "
          f"{e['live_time_ratio']:.4f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recorded", action="store_true",
                    help="also run the standing system and analyze its recorded file")
    a = ap.parse_args()
    print("6e6 e-/spill, 0.05 s a spill, seed 3")
    _scales("gain 1.0, 5 spills", 5)
    _scales("gain 0.92, 3 spills", 3, ecal_gain_scale=0.92)
    _scales("drift -1.2 %/spill, 4 spills", 4, ecal_gain_drift=-0.012)
    msgs, _, _ = simulate(**{**SIM, "seed": 4})  # type: ignore[arg-type]
    [nominal] = analyze(msgs, MonitorConfig()).summaries
    assert nominal.ecal_cells is not None
    ref = {k: c.mean_gev for k, c in nominal.ecal_cells.items()}
    ref_err = {k: c.error_gev for k, c in nominal.ecal_cells.items()}
    for cell in ("MAIN_2_2", "MAIN_2_3"):
        _cell_drift(cell, ref, ref_err)
    _scales("MAIN_0_0 at 0.9", 1, ecal_gain_drift=-0.1, ecal_drift_cell="MAIN_0_0")
    with tempfile.TemporaryDirectory() as d:
        for board in ("BEAM", "ECAL"):
            _stopped(board, Path(d))
        if a.recorded:
            for board in ("BEAM", "ECAL"):
                _recorded(board, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
