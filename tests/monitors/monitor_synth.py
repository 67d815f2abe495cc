"""Synthetic features streams with a known composition and known neighbour counts.

Its own toy model, drawn directly as features (no pulses, no reconstruction windows), not
the simulator's (simulators/physics.py, decision 0003 "Pileup"): the truth of each event is
written down rather than reconstructed, so the monitors' bookkeeping (counts per species,
pileup, spills, intervals, alarms) is checked against exact numbers. Per event: a species
(electron, hadron or muon at fixed fractions) with a caricature of its deposits; a Poisson
number of neighbours in the VETO gate, each adding a 0.02 GeV MIP to E_VETO, and in the
HCAL gate, each adding 2 GeV to the first three HCAL modules (there is no separate halo:
a neighbour is the only extra deposit); and a Poisson number of extra beam particles in
`mult`. A hadron or a muon fires the VETO with its own MIP; an electron's VETO is noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daq.wire import Kind, Message


@dataclass(frozen=True)
class Truth:
    """What a synthetic spill was made with (per-event arrays)."""

    species: np.ndarray  # 0 electron, 1 hadron, 2 muon
    n_veto: np.ndarray  # neighbours in the VETO gate
    n_hcal: np.ndarray  # neighbours in the HCAL gate
    mult: np.ndarray


def features(rng: np.random.Generator, n: int, *, hadron: float = 0.01, muon: float = 0.002,
             lam_veto: float = 0.0625, lam_hcal: float = 0.05, lam_beam: float = 0.075,
             ) -> tuple[dict[str, np.ndarray], Truth]:
    """Features arrays of `n` events: electrons shower at 100 GeV with SRD; hadrons shower in
    HCAL; muons are MIPs everywhere. Every neighbour in a gate adds a fixed deposit there
    (module docstring)."""
    u = rng.random(n)
    sp = np.zeros(n, np.uint8)
    sp[u < hadron + muon] = 2
    sp[u < hadron] = 1
    ele, had, mu = sp == 0, sp == 1, sp == 2
    nv = rng.poisson(lam_veto, n)
    nh = rng.poisson(lam_hcal, n)
    mult = (1 + rng.poisson(lam_beam, n)).astype(np.uint8)
    e_ecal = np.where(ele, rng.normal(100, 2, n), np.where(had, rng.uniform(0, 30, n), 0.27))
    e_ps = np.where(ele, rng.beta(4, 32, n) * e_ecal, 0.02 + 0.02 * rng.random(n))
    e_srd = np.where(ele, rng.lognormal(np.log(0.02), 0.7, n).clip(0.001, 0.1), 0.0)
    e_hcal = np.zeros((n, 4), np.float32)
    e_hcal[had, :3] = (100 - e_ecal[had])[:, None] * np.array([0.6, 0.3, 0.1])
    e_hcal[mu] = 2.0
    e_hcal[:, :3] += 2.0 * nh[:, None]
    e_veto = 0.02 * (nv + (~ele)) + np.abs(rng.normal(0, 2e-4, n))
    f = {
        "ts": np.sort(rng.integers(0, 4_800_000_000, n)).astype(np.int64),
        "e_ecal": e_ecal.astype(np.float32), "e_ps": e_ps.astype(np.float32),
        "e_hcal": e_hcal, "e_veto": e_veto.astype(np.float32),
        "e_srd": (e_srd + np.abs(rng.normal(0, 1e-4, n))).astype(np.float32),
        "mult": mult, "sat": np.zeros(n, np.uint8), "missing": np.zeros(n, np.uint8),
        "cond": np.full(n, 2, np.uint8), "bits": np.zeros(n, np.uint8),
        "shadow": np.zeros(n, np.uint8),
    }
    f["cond"][e_ecal < 90] |= 1
    f["bits"] = (f["cond"] & 1).astype(np.uint8)
    f["bits"][::100] |= 2  # beam trigger prescaled by 100
    return f, Truth(sp, nv, nh, mult)


def spill_messages(rng: np.random.Generator, *, run: int = 1, spill: int = 1, slices: int = 4,
                   slice_events: int = 1000, shed: int = 0, workers: int = 2,
                   seq0: dict[str, int] | None = None, **kw: float
                   ) -> tuple[list[Message], list[Truth]]:
    """One spill as workers would send it: features per slice, round-robin over workers,
    then the builder's spill_end forwarded by worker 0 (seq counted per worker)."""
    seq = seq0 if seq0 is not None else {}
    msgs, truths = [], []

    def nxt(src: str) -> int:
        seq[src] = seq.get(src, -1) + 1
        return seq[src]

    for k in range(slices):
        f, t = features(rng, slice_events, **kw)
        src = f"trigger-{k % workers}"
        msgs.append(Message(Kind.FEATURES, run=run, spill=spill, seq=nxt(src), src=src,
                            board="ALL", first=k * slice_events, count=slice_events, arrays=f,
                            meta={"slice_index": k, "cfg": "x", "shadow_cfg": None,
                                  "mode": "feature", "calib": "c"}))
        truths.append(t)
    msgs.append(Message(Kind.SPILL_END, run=run, spill=spill, seq=nxt("trigger-0"),
                        src="trigger-0", meta={
                            "slices": slices, "events": slices * slice_events + shed,
                            "incomplete": {"BEAM": 0, "SRD": 0, "ECAL": 0, "VETO": 0,
                                           "HCAL": 0},
                            "shed": shed, "gaps": {}, "scalers": {"beam": 123}}))
    return msgs, truths
