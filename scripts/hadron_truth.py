"""Beam composition and the hadrons' leading neutrals against the simulator's truth.

    python scripts/hadron_truth.py neutrals --leading-neutral 0.2 --generated-s 0.2
    python scripts/hadron_truth.py srd-time

(The composition against the injected species: scripts/pileup_truth.py.)
`neutrals`: at 6e6 e-/spill, the hadrons whose leading neutral escaped (truth process) and
how many of them pass each cut of the signal box (monitors.identify, unblinded), scaled to
a 4.8 s spill at the default `hadron_leading_neutral` (1e-3 of the interacting hadrons).
`srd-time`: at 6e6 e-/spill in feature mode (seed 3, 0.05 s), what a cut on the time of
each event's largest SRD pulse (the front end's `hit_t`) would do: hadrons and muons with
an electron's SRD pulse in the SRD window (truth, tests/pileup_truth.srd_reached) still
tagged, and electrons that lose their tag.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "monitors"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor_truth import detector, simulate

from daq.hits import T_UNIT_NS, densify
from monitors.config import MonitorConfig
from monitors.identify import hcal_total, single_track_in_window, srd_tagged
from simulators.config import SimConfig
from simulators.generator import Simulator
from simulators.physics import Process
from tests import pileup_truth as pt

FEATURES = ("e_ecal", "e_ps", "e_hcal", "e_veto", "e_srd", "mult", "sat", "p", "ntrk", "missing")
DEFAULT_LEADING_NEUTRAL = 1e-3


def _features(msgs: list) -> dict[str, np.ndarray]:
    return {k: np.concatenate([m.arrays[k] for m in msgs if m.kind == "features"])
            for k in FEATURES}


def neutrals(leading_neutral: float, generated_s: float, seed: int) -> None:
    cfg = MonitorConfig(blind=False)
    msgs, truth, sim = simulate(intensity=6e6, generated_s=generated_s, seed=seed,
                                hadron_leading_neutral=leading_neutral)
    f = _features(msgs)
    ln = truth["process"] == Process.LEADING_NEUTRAL
    scale = sim.spill_length_s / generated_s * DEFAULT_LEADING_NEUTRAL / leading_neutral
    eh = hcal_total(f)
    cuts = (("E_ECAL < signal_ecal_max", f["e_ecal"] < cfg.signal_ecal_max_gev),
            ("and E_HCAL < signal_hcal_max", eh < cfg.signal_hcal_max_gev),
            ("and SRD-tagged", srd_tagged(f, cfg)),
            ("and E_PS >= ps_min", f["e_ps"] >= cfg.ps_min_gev),
            ("and VETO < veto_zero", f["e_veto"] < cfg.veto_zero_gev),
            ("and cut (i): one track in the momentum window", single_track_in_window(f, cfg)))
    sel = ln.copy()
    print(f"{int(ln.sum())} leading-neutral hadrons of {len(ln)} events "
          f"({ln.sum() * scale:.1f} per spill at {DEFAULT_LEADING_NEUTRAL:g})")
    for label, cut in cuts:
        sel &= cut
        print(f"  {label}: {int(sel.sum())} ({sel.sum() * scale:.2f} per spill); "
              f"this cut alone: {int((ln & cut).sum())}")


def srd_time() -> None:
    geom, cal = detector()
    sim = Simulator(SimConfig.parse({"intensity": 6e6, "generated_s": 0.05, "seed": 3}),
                    geom, cal)
    slices = list(sim.slices(sim.plan(1)))
    srd = {k: np.concatenate([s.boards["SRD"][k] for s in slices])
           for k in ("nhit", "hit_ch", "hit_amp", "hit_t")}
    truth = {k: np.concatenate([s.truth[k] for s in slices])
             for k in ("t_ns", "species", "e_srd")}
    nch = len(geom.board("SRD").channels)
    amp = densify(srd["nhit"], srd["hit_ch"], srd["hit_amp"], nch)
    t = densify(srd["nhit"], srd["hit_ch"], srd["hit_t"], nch) * T_UNIT_NS
    t_srd = t[np.arange(len(t)), np.argmax(amp, axis=1)]  # the largest pulse's time
    ele = truth["species"] == 0
    near = pt.srd_reached(geom, truth, MonitorConfig().srd_min_gev / 2)
    read = amp.max(axis=1) > 0
    print(f"{len(t)} events; {int((ele & near).sum())} electrons and "
          f"{int((~ele & near).sum())} hadrons or muons with another electron's SRD pulse "
          "in the SRD window")
    for window in (3.0, 5.0, 7.5, 10.0, 15.0):
        tagged = read & (np.abs(t_srd) < window)
        print(f"  |t_srd| < {window:4.1f} ns: hadrons/muons tagged "
              f"{int((~ele & near & tagged).sum())}, electrons untagged "
              f"{int((ele & ~tagged).sum())} ({int((ele & near & ~tagged).sum())} with a "
              "neighbour)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("neutrals", "srd-time"))
    ap.add_argument("--leading-neutral", type=float, default=0.2,
                    help="hadron_leading_neutral of the neutrals run (scaled back to 1e-3)")
    ap.add_argument("--generated-s", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    if a.what == "srd-time":
        srd_time()
    else:
        neutrals(a.leading_neutral, a.generated_s, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
