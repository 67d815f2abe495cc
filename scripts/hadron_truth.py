"""Beam composition and the hadrons' leading neutrals against the simulator's truth.

    python scripts/hadron_truth.py composition      # docs/monitors.md composition rows
    python scripts/hadron_truth.py neutrals --leading-neutral 0.2 --generated-s 0.2
    python scripts/hadron_truth.py srd-time

`composition`: for 1e6, 6e6 and 1e7 e-/spill in both readout modes (seed 3, the beam time
of tests/monitors/test_monitor_truth.py), the monitors' electron, hadron and muon fractions
(3-sigma Wilson) against the injected species, and the hadrons and muons identified as
electrons, with how many of those had an electron neighbour in the 50 ns SRD gate (truth).
`neutrals`: at 6e6 e-/spill, the hadrons whose leading neutral escaped (truth process) and
how many of them pass each cut of the signal box (monitors.identify, unblinded), scaled to
a 4.8 s spill at the default `hadron_leading_neutral` (1e-3 of the interacting hadrons).
`srd-time`: at 6e6 e-/spill in feature mode (seed 3, 0.05 s), what a cut on the time of
each event's largest SRD pulse (the front end's `hit_t`) would do: hadrons and muons with
an electron in the SRD gate still tagged, and electrons that lose their tag.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "monitors"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor_truth import detector, electron_within, simulate

from daq.hits import T_UNIT_NS, densify
from monitors.analysis import analyze
from monitors.config import MonitorConfig
from monitors.identify import Species, classify, hcal_total, single_track_in_window, srd_tagged
from simulators.config import SimConfig
from simulators.generator import Simulator
from simulators.physics import Process

FEATURES = ("e_ecal", "e_ps", "e_hcal", "e_veto", "e_srd", "mult", "sat", "p", "ntrk", "missing")
CASES = ((1e6, 0.2), (6e6, 0.05), (1e7, 0.03))  # test_monitor_truth's beam time
DEFAULT_LEADING_NEUTRAL = 1e-3


def _features(msgs: list) -> dict[str, np.ndarray]:
    return {k: np.concatenate([m.arrays[k] for m in msgs if m.kind == "features"])
            for k in FEATURES}


def composition() -> None:
    cfg = MonitorConfig(confidence=0.9973)
    srd_gate = detector()[0].board("SRD").window_ns
    print("| e-/spill | mode | electrons | hadrons | muons | hadrons / muons as electrons "
          "(electron in the SRD gate) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for intensity, gen in CASES:
        for mode in ("feature", "waveform"):
            msgs, truth, _ = simulate(intensity=intensity, generated_s=gen, seed=3, mode=mode)
            tot = analyze(msgs, cfg).totals()
            code = classify(_features(msgs), cfg)
            near = electron_within(truth, srd_gate / 2 + 1)  # ts is floored to ns
            cells = []
            for sp, name in enumerate(("electron", "hadron", "muon")):
                iv = tot.composition_intervals[name]
                injected = float((truth["species"] == sp).mean())
                cells.append(f"{iv.value:.5f} [{iv.low:.5f}, {iv.high:.5f}] / {injected:.5f}")
            mis = [(truth["species"] == sp) & (code == Species.ELECTRON) for sp in (1, 2)]
            cells.append(" / ".join(f"{int(m.sum())} ({int((m & near).sum())})" for m in mis))
            print(f"| {intensity:.0e} | {mode} | " + " | ".join(cells) + " |")


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
    truth = {k: np.concatenate([s.truth[k] for s in slices]) for k in ("ts", "species")}
    nch = len(geom.board("SRD").channels)
    amp = densify(srd["nhit"], srd["hit_ch"], srd["hit_amp"], nch)
    t = densify(srd["nhit"], srd["hit_ch"], srd["hit_t"], nch) * T_UNIT_NS
    t_srd = t[np.arange(len(t)), np.argmax(amp, axis=1)]  # the largest pulse's time
    ele = truth["species"] == 0
    near = electron_within(truth, geom.board("SRD").window_ns / 2 + 1)
    read = amp.max(axis=1) > 0
    print(f"{len(t)} events; {int((ele & near).sum())} electrons and "
          f"{int((~ele & near).sum())} hadrons or muons with an electron in the SRD gate")
    for window in (3.0, 5.0, 7.5, 10.0, 15.0):
        tagged = read & (np.abs(t_srd) < window)
        print(f"  |t_srd| < {window:4.1f} ns: hadrons/muons tagged "
              f"{int((~ele & near & tagged).sum())}, electrons untagged "
              f"{int((ele & ~tagged).sum())} ({int((ele & near & ~tagged).sum())} with a "
              "neighbour)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("composition", "neutrals", "srd-time"))
    ap.add_argument("--leading-neutral", type=float, default=0.2,
                    help="hadron_leading_neutral of the neutrals run (scaled back to 1e-3)")
    ap.add_argument("--generated-s", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    if a.what == "composition":
        composition()
    elif a.what == "srd-time":
        srd_time()
    else:
        neutrals(a.leading_neutral, a.generated_s, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
