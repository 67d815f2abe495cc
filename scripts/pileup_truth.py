"""Pileup, VETO and HCAL zero-threshold efficiencies and the beam composition against the
simulator's truth, for docs/monitors.md ("Physics model vs truth vs the paper").

    python scripts/pileup_truth.py              # the table, 1e6, 6e6, 1e7 in both modes
    python scripts/pileup_truth.py --halo 0.4   # another halo rate (SimConfig.halo_rate)

Seed 3 and the beam time of tests/monitors/test_monitor_truth.py. Per row: the pileup
fraction (measured / beam neighbours within the BEAM window, truth), the efficiencies
(measured [3-sigma Wilson] / the truth expectation exp(-r W_eff) of tests/pileup_truth.py,
r the rate of particles that cross the board, W_eff integrated from the pulse shape), the
event-by-event check (events that must fail and fail, must pass and pass, grey), and the
hadrons and muons taken for electrons, with how many had a beam electron whose SRD pulse
reaches the SRD window (truth, tests/pileup_truth.srd_reached).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "monitors"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor_truth import detector, simulate

from monitors.analysis import analyze
from monitors.config import MonitorConfig
from monitors.identify import Species, classify, electron_sample, hcal_total
from simulators.config import SimConfig
from tests import pileup_truth as pt
from trigger.config import TriggerConfig

CASES = ((1e6, 0.2), (6e6, 0.05), (1e7, 0.03))  # test_monitor_truth's beam time
FEATURES = ("e_ecal", "e_ps", "e_hcal", "e_veto", "e_srd", "mult", "p", "ntrk", "missing")


def row(intensity: float, gen: float, mode: str, halo: float) -> str:
    cfg = MonitorConfig(confidence=0.9973)
    msgs, truth, sim = simulate(intensity=intensity, generated_s=gen, seed=3, mode=mode,
                                halo_rate=halo)
    tot = analyze(msgs, cfg).totals()
    f = {k: np.concatenate([m.arrays[k] for m in msgs if m.kind == "features"])
         for k in FEATURES}
    geom, cal = detector()
    beam = geom.board_names.index("BEAM")
    cells = [f"{intensity:.0e}", mode,
             f"{tot.pileup_fraction:.4f} / {float((truth['pileup'][:, beam] > 0).mean()):.4f}"]
    sample = electron_sample(f, cfg)
    zthr = TriggerConfig().zero_threshold_adc
    for est, name, zero, fails in (
            (tot.veto_efficiency, "VETO", cfg.veto_zero_gev, f["e_veto"] >= cfg.veto_zero_gev),
            (tot.hcal_efficiency, "HCAL", cfg.hcal_zero_gev,
             hcal_total(f) >= cfg.hcal_zero_gev)):
        b = pt.board(geom, cal, name, zero, zthr)
        expect = pt.expected_efficiency(b, truth, sim.rate_hz, sim.halo_rate, sample)
        c = pt.classify(b, truth)[sample]
        s_fail = fails[sample]
        cells.append(f"{est.value:.4f} [{est.low:.4f}, {est.high:.4f}] / {expect:.4f}")
        cells.append(f"{int(s_fail[c == pt.MUST_FAIL].sum())}/{int((c == pt.MUST_FAIL).sum())}, "
                     f"{int((~s_fail)[c == pt.MUST_PASS].sum())}/{int((c == pt.MUST_PASS).sum())}"
                     f", {int((c == pt.GREY).sum())}")
    code = classify(f, cfg)
    reached = pt.srd_reached(geom, truth, cfg.srd_min_gev / 2)
    for sp, name in ((1, "hadron"), (2, "muon")):
        iv = tot.composition_intervals[name]
        injected = float((truth["species"] == sp).mean())
        mis = (truth["species"] == sp) & (code == Species.ELECTRON)
        cells.append(f"{iv.value:.5f} [{iv.low:.5f}, {iv.high:.5f}] / {injected:.5f}; "
                     f"{int(mis.sum())} ({int((mis & reached).sum())})")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--halo", type=float, default=SimConfig.parse({}).halo_rate,
                    help="halo particles per beam particle (SimConfig.halo_rate)")
    a = ap.parse_args()
    print("| e-/spill | mode | pileup | VETO eff. | VETO events | HCAL eff. | HCAL events | "
          "hadrons; as electrons (SRD reached) | muons; as electrons (SRD reached) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for intensity, gen in CASES:
        for mode in ("feature", "waveform"):
            print(row(intensity, gen, mode, a.halo), flush=True)
    print(f"(paper at 5-7e6 e-/spill: VETO ~0.94, HCAL ~0.95; halo rate {a.halo}; "
          f"e^-1 of a 62313-event sample: sigma ~{math.sqrt(0.06 * 0.94 / 62313):.4f})")


if __name__ == "__main__":
    main()
