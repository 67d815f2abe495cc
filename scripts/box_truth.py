"""The signal box, sideband C and the dimuons at 6e6 e-/spill against the simulator's truth.

    python scripts/box_truth.py --generated-s 0.5 --seed 8                     # model rates
    python scripts/box_truth.py --generated-s 0.2 --seed 7 --signal 2e-3 --dimuon 2e-3
    python scripts/box_truth.py --examine     # and what put each other event in the dimuons,
                                              # and what the saturation cut took out

Simulates a fraction of a spill through the real trigger features
(tests/monitors/monitor_truth.simulate), counts each region with the monitors' definitions
(monitors.identify, unblinded) split by the truth process, scales to the 4.8 s spill, and
prints the A' efficiency of the box and the dimuon selection's efficiency (68 % Wilson).
With --examine, every event of another process the dimuon selection takes, from the truth:
its species, what it read against its own deposits, and the beam particles and the halo
near it in time (a halo particle crosses HCAL1-3 with a MIP in each, decision 0003); and
every event the ECAL saturation cut took out of the box or of C, the same way.
The figures of docs/monitors.md ("Signal box, sideband C and dimuons at 6e6").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "monitors"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor_truth import simulate

from monitors.analysis import analyze
from monitors.config import MonitorConfig
from monitors.identify import dimuon, saturated_candidates, sideband_c, signal_box
from monitors.stats import estimate
from simulators.physics import Process, Species

FEATURES = ("e_ecal", "e_ps", "e_hcal", "e_veto", "e_srd", "mult", "sat", "p", "ntrk", "missing")
NEAR_NS = 100.0  # beam neighbours shown: within the ECAL's window and its pulses' tails
OWN = ("e_ecal", "e_ps", "e_srd", "e_veto")


def examine(f: dict[str, np.ndarray], truth: dict[str, np.ndarray], sel: np.ndarray) -> None:
    """Each selected event, from the truth: what it read against its own deposits and the
    beam particles near it."""
    t, proc = truth["t_ns"], truth["process"]
    for i in np.flatnonzero(sel):
        print(f"event {i}: {Process(proc[i]).name} {Species(truth['species'][i]).name}, "
              f"p_true {truth['p_true'][i]:.1f} GeV; halo nearest before/after "
              f"{truth['halo_dt'][i][0]:+.1f}/{truth['halo_dt'][i][1]:+.1f} ns")
        print("  read / own: " + ", ".join(
            f"{k} {float(f[k][i]):.3g} / {float(truth[k][i]):.3g}" for k in OWN)
            + f"; e_hcal {np.round(f['e_hcal'][i], 2)} / {np.round(truth['e_hcal'][i], 2)}")
        for j in np.flatnonzero(np.abs(t - t[i]) < NEAR_NS):
            if j != i:
                print(f"  beam particle at {t[j] - t[i]:+.1f} ns: "
                      f"{Process(proc[j]).name} {Species(truth['species'][j]).name}, own "
                      + ", ".join(f"{k} {float(truth[k][j]):.3g}" for k in OWN)
                      + f", e_hcal {np.round(truth['e_hcal'][j], 2)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generated-s", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--signal", type=float, default=1e-4, help="A' per electron")
    ap.add_argument("--dimuon", type=float, default=1e-4, help="dimuons per electron")
    ap.add_argument("--examine", action="store_true",
                    help="show each event of another process that the dimuon selection takes")
    a = ap.parse_args()
    msgs, truth, cfg = simulate(intensity=6e6, generated_s=a.generated_s, seed=a.seed,
                                signal_rate=a.signal, dimuon_rate=a.dimuon)
    f = {k: np.concatenate([m.arrays[k] for m in msgs if m.kind == "features"])
         for k in FEATURES}
    scale = cfg.spill_length_s / a.generated_s
    shown = MonitorConfig(blind=False)
    no_cut_i = shown.model_copy(update={"signal_p_min_gev": 0.0, "signal_p_max_gev": 1000.0,
                                        "signal_max_tracks": 255})
    proc = truth["process"]
    print(f"6e6 e-/spill, {a.generated_s} s ({len(proc)} events, x{scale:.1f} per spill), "
          f"seed {a.seed}, A' {a.signal}, dimuons {a.dimuon} per electron")
    for label, sel in (("box, cut (i)", signal_box(f, shown)),
                       ("box, no cut (i)", signal_box(f, no_cut_i)),
                       ("sideband C", sideband_c(f, shown)), ("dimuons", dimuon(f, shown))):
        by = {p.name.lower(): int((sel & (proc == p)).sum()) for p in Process}
        print(f"{label}: {int(sel.sum())} {by}, per spill {sel.sum() * scale:.0f}")
    for label, sel, p in (("box's A' efficiency", signal_box(f, shown), Process.SIGNAL),
                          ("dimuon efficiency", dimuon(f, shown), Process.DIMUON)):
        e = estimate(int((sel & (proc == p)).sum()), int((proc == p).sum()), 0.6827)
        print(f"{label}: {e.value:.3f} [{e.low:.3f}, {e.high:.3f}] ({e.k}/{e.n})")
    print(f"truth dimuons per spill: {(proc == Process.DIMUON).sum() * scale:.0f}")
    tot = analyze(msgs, shown).totals()
    print(f"monitor totals: box {tot.signal_box}, C {tot.sideband_c}, dimuons {tot.dimuons} "
          f"({tot.dimuons_per_eot:.2e} per EOT), EOT {tot.eot:.0f}, taken out by a saturated "
          f"ECAL {tot.ecal_saturated}; blind by default: {analyze(msgs).totals().signal_box}")
    if a.examine:
        print("dimuon selection, other processes:")
        examine(f, truth, dimuon(f, shown) & (proc != Process.DIMUON))
        for region, sel in saturated_candidates(f, shown).items():
            print(f"taken out of {region} by a saturated ECAL channel:")
            examine(f, truth, sel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
