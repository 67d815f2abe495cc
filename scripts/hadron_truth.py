"""Beam composition and the hadrons' leading neutrals against the simulator's truth.

    python scripts/hadron_truth.py neutrals --leading-neutral 0.2 --generated-s 0.2
    python scripts/hadron_truth.py srd-time

(The composition against the injected species: scripts/pileup_truth.py.)
`neutrals`: at 6e6 e-/spill, the hadrons whose leading neutral escaped (truth process) and
how many of them pass each cut of the signal box (monitors.identify, unblinded), scaled to
a 4.8 s spill at the default `hadron_leading_neutral` (1e-3 of the interacting hadrons).
`srd-time`: the SRD tag against the truth for SRD windows of 25, 37.5 and 50 ns, with the
SRD's sum as it is (untimed) and timed by its pulse (`TriggerConfig.timed_boards`: a
channel counts only when a pulse peaks in the window), at 6e6 and 1e7 e-/spill in both
readout modes (seed 3, test_monitor_truth's beam time): electrons (truth) that lose the
tag, and hadrons and muons (truth) that gain it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "monitors"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor_truth import detector, simulate

from monitors.config import MonitorConfig
from monitors.identify import hcal_total, single_track_in_window, srd_tagged
from simulators.physics import Process
from trigger.config import TriggerConfig

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
    geom0, _ = detector()
    cfg = MonitorConfig()
    print("| SRD window | sum | e-/spill | mode | electrons losing the tag | hadrons / muons "
          "gaining it |")
    print("| --- | --- | --- | --- | --- | --- |")
    for window in (25.0, 37.5, 50.0):
        geom = geom0.model_validate({**geom0.model_dump(), "boards": [
            {**b.model_dump(), "window_ns": window} if b.name == "SRD" else b.model_dump()
            for b in geom0.boards]})
        for timed in ((), ("SRD",)):
            for intensity, gen in ((6e6, 0.05), (1e7, 0.03)):
                for mode in ("feature", "waveform"):
                    msgs, truth, _ = simulate(intensity=intensity, generated_s=gen, seed=3,
                                              mode=mode, geometry=geom,
                                              trigger=TriggerConfig(timed_boards=timed))
                    tag = srd_tagged(_features(msgs), cfg)
                    sp = truth["species"]
                    print(f"| {window:g} ns | {'timed' if timed else 'untimed'} | "
                          f"{intensity:.0e} | {mode} | {int(((sp == 0) & ~tag).sum())} of "
                          f"{int((sp == 0).sum())} | {int(((sp == 1) & tag).sum())} / "
                          f"{int(((sp == 2) & tag).sum())} of {int((sp == 1).sum())} / "
                          f"{int((sp == 2).sum())} |", flush=True)


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
