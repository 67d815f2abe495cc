"""Beam particles and their detector response: pure numpy, seeded, one block of particles at a time.

Every quantity here is a deposit of one particle, in calibrated units (GeV; MIP for the beam
counters), spread over the channels of each board. Pileup and digitisation are elsewhere
(simulators/readout.py). The physics choices are recorded in docs/decisions/0003.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from daq.geometry import Geometry
from simulators.config import SimConfig


class Species(enum.IntEnum):
    ELECTRON = 0
    HADRON = 1
    MUON = 2


class Process(enum.IntEnum):
    NORMAL = 0
    UPSTREAM_LOSS = 1
    DIMUON = 2
    SIGNAL = 3


# Detector constants of the model (why these values: docs/decisions/0003-simulator-model.md).
ECAL_STOCH = 0.10  # sampling term, GeV^1/2
ECAL_CONST = 0.01  # constant term
HCAL_STOCH = 0.60
PS_BETA = (4.0, 32.0)  # preshower share of an electron shower: mean 0.11
ECAL_MIP_PS, ECAL_MIP_MAIN = 0.02, 0.25  # GeV a minimum-ionising particle leaves
VETO_MIP = 0.010  # GeV per PMT of the counter crossed
HCAL_MIP = 2.0  # GeV per HCAL module crossed
MIP_SPREAD = 0.10  # lognormal sigma of MIP signals (Landau-like tail)
SRD_MEDIAN_GEV, SRD_SIGMA, SRD_RANGE = 0.020, 0.7, (0.001, 0.100)
HADRON_ECAL_INTERACTION = 0.3  # probability of an early hadronic shower in the ECAL
HCAL_LONGITUDINAL = (6.0, 3.0, 1.0)  # Dirichlet shares of HCAL1..3 for a hadron shower
SPOT = (2, 2)  # ECAL cell (x, y) the beam axis hits
HCAL_CENTRE = (1, 1)
VETO_AXIS_COUNTER = 1


@dataclass(frozen=True)
class Layout:
    """Channel indices the physics needs, resolved once from the geometry."""

    ecal_ps: np.ndarray  # (9,) channel indices of the 3x3 around the spot, preshower
    ecal_main: np.ndarray  # (9,) same, main section; entry 4 is the spot cell
    hcal: np.ndarray  # (4, 9) channel indices of each module's 3x3; entry 4 the centre
    veto_pmts: np.ndarray  # (3, 2) the two PMT channels of each VETO counter
    n: dict[str, int]

    @classmethod
    def of(cls, geom: Geometry) -> Layout:
        def grid(board: str, group: str, cx: int, cy: int) -> np.ndarray:
            chans = geom.board(board).channels
            where = {(c.x, c.y): i for i, c in enumerate(chans) if c.group == group}
            return np.array([where[(cx + dx, cy + dy)] for dx in (-1, 0, 1) for dy in (-1, 0, 1)])

        veto = geom.board("VETO").channels
        pmts = np.array([[i for i, c in enumerate(veto) if c.x == k] for k in range(3)])
        return cls(
            ecal_ps=grid("ECAL", "PS", *SPOT), ecal_main=grid("ECAL", "MAIN", *SPOT),
            hcal=np.stack([grid("HCAL", f"HCAL{m}", *HCAL_CENTRE) for m in range(1, 5)]),
            veto_pmts=pmts, n={b.name: len(b.channels) for b in geom.boards})


@dataclass
class Particles:
    """One block of beam particles: what each is and what it deposits (calibrated units)."""

    species: np.ndarray  # uint8
    process: np.ndarray  # uint8
    e_true: np.ndarray  # float32, particle energy, GeV
    dep: dict[str, np.ndarray]  # board -> (n, nch) float32 deposit when in time
    halo: dict[str, np.ndarray]  # board -> (n, nch) extra deposit when a pileup neighbour

    def __len__(self) -> int:
        return len(self.species)


def ecal_resolution(e: np.ndarray) -> np.ndarray:
    """Relative ECAL resolution sqrt((a/sqrt(E))^2 + b^2), the two terms in quadrature."""
    return np.sqrt(ECAL_STOCH**2 / np.maximum(e, 1e-3) + ECAL_CONST**2)


def srd_sample(rng: np.random.Generator, n: int) -> np.ndarray:
    """Total SRD energy, GeV: lognormal truncated to SRD_RANGE by redrawing."""
    out = rng.lognormal(np.log(SRD_MEDIAN_GEV), SRD_SIGMA, n)
    bad = (out < SRD_RANGE[0]) | (out > SRD_RANGE[1])
    while bad.any():
        out[bad] = rng.lognormal(np.log(SRD_MEDIAN_GEV), SRD_SIGMA, int(bad.sum()))
        bad = (out < SRD_RANGE[0]) | (out > SRD_RANGE[1])
    return out.astype(np.float32)


def _mip(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return (scale * rng.lognormal(0.0, MIP_SPREAD, n)).astype(np.float32)


def generate_block(cfg: SimConfig, layout: Layout, rng: np.random.Generator, n: int
                   ) -> Particles:
    """Draw `n` beam particles and their deposits (pure function of the generator state)."""
    u = rng.random(n)
    species = np.zeros(n, np.uint8)
    species[u < cfg.hadron_fraction + cfg.muon_fraction] = Species.MUON
    species[u < cfg.hadron_fraction] = Species.HADRON
    ele = species == Species.ELECTRON
    v = rng.random(n)
    process = np.zeros(n, np.uint8)
    c1 = cfg.upstream_loss_rate
    c2 = c1 + cfg.dimuon_rate
    c3 = c2 + cfg.signal_rate
    process[ele & (v < c3)] = Process.SIGNAL
    process[ele & (v < c2)] = Process.DIMUON
    process[ele & (v < c1)] = Process.UPSTREAM_LOSS
    e_true = (cfg.beam_energy_gev * (1 + cfg.momentum_spread * rng.standard_normal(n)))
    e_true = np.maximum(e_true, 0.0).astype(np.float32)

    dep = {name: np.zeros((n, k), np.float32) for name, k in layout.n.items()}
    # Beam counters: every particle crosses S1..S3; halo particles also fire V1.
    dep["BEAM"][:, :3] = rng.lognormal(0.0, MIP_SPREAD, (n, 3))
    halo_v1 = rng.random(n) < cfg.v1_fraction
    dep["BEAM"][:, 3] = np.where(halo_v1, _mip(rng, n, 1.0), 0.0)

    e_shower = np.zeros(n, np.float32)  # energy in an electromagnetic-like ECAL shower
    e_shower[ele] = e_true[ele]
    ul = process == Process.UPSTREAM_LOSS
    e_shower[ul] *= rng.uniform(0.1, 0.9, ul.sum()).astype(np.float32)
    dm = process == Process.DIMUON
    e_shower[dm] *= 1 - rng.uniform(0.2, 0.8, dm.sum()).astype(np.float32)
    sg = process == Process.SIGNAL
    # A' takes x with density 2x on [0, 0.99]: the recoil electron keeps 1 - x.
    e_shower[sg] *= 1 - np.minimum(np.sqrt(rng.random(sg.sum())), 0.99).astype(np.float32)
    had = species == Species.HADRON
    hint = had & (rng.random(n) < HADRON_ECAL_INTERACTION)
    e_shower[hint] = e_true[hint] * rng.uniform(0.05, 0.5, hint.sum()).astype(np.float32)

    shower = e_shower > 0
    ps_share = np.where(ele, rng.beta(*PS_BETA, n), rng.uniform(0.0, 0.1, n))
    smeared = e_shower * (1 + ecal_resolution(e_shower) * rng.standard_normal(n))
    smeared = np.where(shower, np.maximum(smeared, 0.0), 0.0).astype(np.float32)
    lateral = _lateral(rng, n, centre=0.75)
    dep["ECAL"][:, layout.ecal_ps] = (smeared * ps_share)[:, None] * lateral
    dep["ECAL"][:, layout.ecal_main] = (smeared * (1 - ps_share))[:, None] * lateral
    # Minimum-ionising passages: muons, non-interacting hadrons, the dimuon pair (two).
    nmip = ((species == Species.MUON) | (had & ~hint)).astype(np.float32) + 2 * dm
    dep["ECAL"][:, layout.ecal_ps[4]] += nmip * _mip(rng, n, ECAL_MIP_PS)
    dep["ECAL"][:, layout.ecal_main[4]] += nmip * _mip(rng, n, ECAL_MIP_MAIN)

    charged_out = (species != Species.ELECTRON).astype(np.float32) + 2 * dm
    for p in layout.veto_pmts[VETO_AXIS_COUNTER]:
        dep["VETO"][:, p] = charged_out * _mip(rng, n, VETO_MIP)
    nmu = (species == Species.MUON).astype(np.float32) + 2 * dm
    for m in range(4):
        dep["HCAL"][:, layout.hcal[m, 4]] = nmu * _mip(rng, n, HCAL_MIP)
    e_had = np.where(had, e_true - e_shower, 0.0)
    e_had = np.maximum(e_had * (1 + HCAL_STOCH / np.sqrt(np.maximum(e_had, 1e-3))
                                * rng.standard_normal(n)), 0.0).astype(np.float32)
    shares = rng.dirichlet(HCAL_LONGITUDINAL, n).astype(np.float32)
    hlat = _lateral(rng, n, centre=0.8)
    for m in range(3):
        dep["HCAL"][:, layout.hcal[m]] += (e_had * shares[:, m])[:, None] * hlat

    srd = np.where(ele, srd_sample(rng, n), 0.0).astype(np.float32)
    w = rng.uniform(0.5, 1.5, (n, 3)).astype(np.float32)
    dep["SRD"][:] = srd[:, None] * w / w.sum(axis=1, keepdims=True)
    return Particles(species, process, e_true, dep, _halo(cfg, layout, rng, n))


def _lateral(rng: np.random.Generator, n: int, centre: float) -> np.ndarray:
    """(n, 9) shares of a 3x3 cluster: centre ~ `centre`, edges 4x the corners, fluctuating."""
    base = np.array([0.25, 1, 0.25, 1, 0, 1, 0.25, 1, 0.25], np.float32)
    w = base * rng.uniform(0.6, 1.4, (n, 9)).astype(np.float32)
    f0 = np.clip(centre + 0.03 * rng.standard_normal(n), 0.5, 0.95).astype(np.float32)
    w *= ((1 - f0) / w.sum(axis=1))[:, None]
    w[:, 4] = f0
    return w


def _halo(cfg: SimConfig, layout: Layout, rng: np.random.Generator, n: int
          ) -> dict[str, np.ndarray]:
    """What a particle adds to VETO and HCAL when it is a pileup neighbour (off-axis halo).

    A neighbour is a beam particle off the axis of the triggering one; it crosses one VETO
    counter and one line of HCAL1..3 cells, which is what makes the zero-threshold
    efficiencies exp(-rate x window) (docs/decisions/0003).
    """
    veto = np.zeros((n, layout.n["VETO"]), np.float32)
    counter = rng.integers(0, 3, n)
    rows = np.arange(n)
    for k in range(2):
        veto[rows, layout.veto_pmts[counter, k]] = _mip(rng, n, VETO_MIP)
    hcal = np.zeros((n, layout.n["HCAL"]), np.float32)
    cell = rng.integers(0, 9, n)
    for m in range(3):
        hcal[rows, layout.hcal[m, cell]] = _mip(rng, n, HCAL_MIP)
    return {"VETO": veto, "HCAL": hcal}
