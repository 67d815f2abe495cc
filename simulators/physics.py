"""Beam particles and their detector response: pure numpy, seeded, one block of particles at a time.

Every quantity here is a deposit of one particle, in calibrated units (GeV; MIP for the beam
counters), spread over the channels of each board. Pileup and digitisation are elsewhere
(simulators/readout.py). The physics choices are recorded in docs/decisions/0003.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from daq.geometry import Geometry
from simulators.config import SimConfig
from simulators.showers import lateral_shares, split_srd, spread_shower


class Species(enum.IntEnum):
    ELECTRON = 0
    HADRON = 1
    MUON = 2


class Process(enum.IntEnum):
    NORMAL = 0
    UPSTREAM_LOSS = 1
    DIMUON = 2
    SIGNAL = 3
    HADRON_ECAL = 4  # a hadron whose nuclear interaction is in the ECAL
    LEADING_NEUTRAL = 5  # HADRON_ECAL whose leading neutral (K0L, n) escapes the detector


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
# ECAL depth in nuclear interaction lengths: the Shashlik's 150 layers of 1.5 mm Pb and
# 1.5 mm scintillator (40 X0) are 22.5 cm Pb / 17.59 cm + 22.5 cm polystyrene / 77.07 cm
# (PDG lambda_I) = 1.57 lambda_I
ECAL_LAMBDA_I = 22.5 / 17.59 + 22.5 / 77.07
#: scale of a hadron shower's longitudinal profile from its start, Gamma(3, scale) in
#: lambda_I: its maximum 2 x scale = 1.62 lambda_I, 0.2 ln(E / GeV) + 0.7 at 100 GeV
HADRON_PROFILE_SCALE = 0.81
LEADING_NEUTRAL_SHARE = (0.5, 0.99)  # uniform share of the hadron's energy the neutral takes
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
    #: BEAM channels of the spectrometer's momentum (P) and track count (TRK); None in a
    #: geometry without them (nothing is measured then)
    track: tuple[int, int] | None = None

    @classmethod
    def of(cls, geom: Geometry) -> Layout:
        def grid(board: str, group: str, cx: int, cy: int) -> np.ndarray:
            chans = geom.board(board).channels
            where = {(c.x, c.y): i for i, c in enumerate(chans) if c.group == group}
            return np.array([where[(cx + dx, cy + dy)] for dx in (-1, 0, 1) for dy in (-1, 0, 1)])

        veto = geom.board("VETO").channels
        pmts = np.array([[i for i, c in enumerate(veto) if c.x == k] for k in range(3)])
        beam = geom.board("BEAM")
        p, trk = beam.indices("P"), beam.indices("TRK")
        return cls(
            ecal_ps=grid("ECAL", "PS", *SPOT), ecal_main=grid("ECAL", "MAIN", *SPOT),
            hcal=np.stack([grid("HCAL", f"HCAL{m}", *HCAL_CENTRE) for m in range(1, 5)]),
            veto_pmts=pmts, n={b.name: len(b.channels) for b in geom.boards},
            track=(int(p[0]), int(trk[0])) if len(p) and len(trk) else None)


@dataclass
class Particles:
    """One block of beam particles: what each is and what it deposits (calibrated units)."""

    species: np.ndarray  # uint8
    process: np.ndarray  # uint8
    e_true: np.ndarray  # float32, particle energy, GeV
    p_true: np.ndarray  # float32, momentum at the spectrometer (upstream loss taken), GeV
    #: board -> (n, nch) float32 deposit, the same whether the particle triggers or is a
    #: pileup neighbour (at its own time offset)
    dep: dict[str, np.ndarray]
    #: board -> uint8 (n,): the particle deposits in some channel (set by calibrate.to_adc)
    touched: dict[str, np.ndarray] = field(default_factory=dict)
    #: board -> uint8 (nch,): some particle deposits in the channel (a superset will do)
    reach: dict[str, np.ndarray] = field(default_factory=dict)

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


def _mip(rng: np.random.Generator, shape: int | tuple[int, ...], scale: float) -> np.ndarray:
    z = rng.standard_normal(shape, dtype=np.float32)
    z *= np.float32(MIP_SPREAD)
    np.exp(z, out=z)
    z *= np.float32(scale)
    return z


def generate_block(cfg: SimConfig, layout: Layout, rng: np.random.Generator, n: int
                   ) -> Particles:
    """Draw `n` beam particles and their deposits (pure function of the generator state).

    Random numbers are drawn only for the particles a quantity concerns (electrons are
    ~99 %: hadron and muon quantities cost little), in float32 where precision allows.
    """
    f32 = np.float32
    u = rng.random(n, dtype=f32)
    species = np.zeros(n, np.uint8)
    species[u < cfg.hadron_fraction + cfg.muon_fraction] = Species.MUON
    species[u < cfg.hadron_fraction] = Species.HADRON
    ele = species == Species.ELECTRON
    v = rng.random(n, dtype=f32)
    process = np.zeros(n, np.uint8)
    c1 = cfg.upstream_loss_rate
    c2 = c1 + cfg.dimuon_rate
    c3 = c2 + cfg.signal_rate
    process[ele & (v < c3)] = Process.SIGNAL
    process[ele & (v < c2)] = Process.DIMUON
    process[ele & (v < c1)] = Process.UPSTREAM_LOSS
    e_true = rng.standard_normal(n, dtype=f32)
    e_true *= f32(cfg.beam_energy_gev * cfg.momentum_spread)
    e_true += f32(cfg.beam_energy_gev)
    np.maximum(e_true, 0, out=e_true)

    dep = {name: np.zeros((n, k), np.float32) for name, k in layout.n.items()}
    # Beam counters: every particle crosses S1..S3; halo particles also fire V1.
    dep["BEAM"][:, :3] = _mip(rng, (n, 3), 1.0)
    halo_v1 = np.flatnonzero(rng.random(n, dtype=f32) < cfg.v1_fraction)
    dep["BEAM"][halo_v1, 3] = _mip(rng, len(halo_v1), 1.0)

    e_shower = np.where(ele, e_true, f32(0))
    lost = process == Process.UPSTREAM_LOSS
    _scale(e_shower, lost, lambda k: rng.uniform(0.1, 0.9, k))
    # the loss is upstream of the spectrometer: it measures what reaches the target
    p_true = np.where(lost, e_shower, e_true)
    dm = process == Process.DIMUON
    _scale(e_shower, dm, lambda k: 1 - rng.uniform(0.2, 0.8, k))
    # A' takes x with density 2x on [0, 0.99]: the recoil electron keeps 1 - x.
    _scale(e_shower, process == Process.SIGNAL,
           lambda k: 1 - np.minimum(np.sqrt(rng.random(k)), 0.99))
    had = np.flatnonzero(species == Species.HADRON)
    hint, e_lost = _hadron_interactions(cfg, rng, had, e_true, e_shower, process)

    ga = rng.standard_gamma(PS_BETA[0], n, dtype=f32)  # Beta(a, b) = Ga / (Ga + Gb)
    ps_share = ga / (ga + rng.standard_gamma(PS_BETA[1], n, dtype=f32))
    other = np.flatnonzero(~ele)
    ps_share[other] = rng.uniform(0.0, 0.1, len(other))
    z = rng.standard_normal(n, dtype=f32)
    z *= ecal_resolution(e_shower).astype(f32)
    z += 1
    smeared = e_shower * z
    np.maximum(smeared, 0, out=smeared)
    lateral = _lateral(rng, n, centre=0.75)
    spread_shower(dep["ECAL"], layout.ecal_ps, layout.ecal_main, smeared, ps_share, lateral)
    # Minimum-ionising passages: muons, non-interacting hadrons, the dimuon pair (two).
    nmip = (species == Species.MUON).astype(f32) + 2 * dm
    nmip[had] = 1
    nmip[hint] = 0
    mip = np.flatnonzero(nmip)
    dep["ECAL"][mip, layout.ecal_ps[4]] += nmip[mip] * _mip(rng, len(mip), ECAL_MIP_PS)
    dep["ECAL"][mip, layout.ecal_main[4]] += nmip[mip] * _mip(rng, len(mip), ECAL_MIP_MAIN)

    charged = (species != Species.ELECTRON).astype(f32) + 2 * dm
    out = np.flatnonzero(charged)
    for p in layout.veto_pmts[VETO_AXIS_COUNTER]:
        dep["VETO"][out, p] = charged[out] * _mip(rng, len(out), VETO_MIP)
    nmu = (species == Species.MUON).astype(f32) + 2 * dm
    mu = np.flatnonzero(nmu)
    for m in range(4):
        dep["HCAL"][mu, layout.hcal[m, 4]] = nmu[mu] * _mip(rng, len(mu), HCAL_MIP)
    e_had = e_true[had] - e_shower[had] - e_lost
    e_had = np.maximum(e_had * (1 + HCAL_STOCH / np.sqrt(np.maximum(e_had, 1e-3))
                                * rng.standard_normal(len(had))), 0.0).astype(f32)
    shares = rng.dirichlet(HCAL_LONGITUDINAL, len(had)).astype(f32)
    hlat = _lateral(rng, len(had), centre=0.8)
    for m in range(3):
        dep["HCAL"][had[:, None], layout.hcal[m][None, :]] += (e_had * shares[:, m])[:, None] * hlat

    srd = srd_sample(rng, n)
    srd[other] = 0
    split_srd(rng.random((n, 3), dtype=f32), srd, dep["SRD"])
    if layout.track is not None:  # drawn last: every other quantity is as without it
        _spectrometer(dep["BEAM"], layout.track, p_true, rng, cfg.tracker_resolution)
    return Particles(species, process, e_true, p_true, dep)


def _hadron_interactions(cfg: SimConfig, rng: np.random.Generator, had: np.ndarray,
                         e_true: np.ndarray, e_shower: np.ndarray, process: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Where each hadron interacts (vectorised over the block): the depth is exponential
    in lambda_I, so one in 1 - exp(-ECAL_LAMBDA_I) interacts in the ECAL; its shower leaves
    there the part of its profile (HADRON_PROFILE_SCALE) before the ECAL's end, the rest
    leaks into the HCAL.
    A fraction `hadron_leading_neutral` of those interactions is a charge exchange: a
    leading neutral (K0L, n) takes LEADING_NEUTRAL_SHARE of the energy and escapes, the
    rest is electromagnetic (pi0s) and stays in the ECAL, and the HCAL sees nothing.

    Sets e_shower (ECAL part) and process of the interacting hadrons; returns their indices
    and, per hadron of `had`, the energy that escapes (GeV, float32).
    """
    f32 = np.float32
    depth = -np.log1p(-rng.random(len(had)))  # lambda_I
    inside = depth < ECAL_LAMBDA_I
    hint = had[inside]
    neutral = rng.random(len(hint)) < cfg.hadron_leading_neutral
    share = np.where(neutral, rng.uniform(*LEADING_NEUTRAL_SHARE, len(hint)), 0.0)
    e_lost = np.zeros(len(had), f32)
    e_lost[inside] = e_true[hint] * share
    process[hint] = np.where(neutral, Process.LEADING_NEUTRAL, Process.HADRON_ECAL)
    contained = np.where(neutral, 1.0, shower_containment(
        (ECAL_LAMBDA_I - depth[inside]) / HADRON_PROFILE_SCALE))
    e_shower[hint] = ((e_true[hint] - e_lost[inside]) * contained).astype(f32)
    return hint, e_lost


def shower_containment(x: np.ndarray) -> np.ndarray:
    """Share of a hadron shower within x profile scales of its start: the CDF of the
    Gamma(3) profile, 1 - exp(-x) (1 + x + x^2 / 2)."""
    return 1 - np.exp(-x) * (1 + x + x * x / 2)


def _spectrometer(beam: np.ndarray, track: tuple[int, int], p_true: np.ndarray,
                  rng: np.random.Generator, resolution: float) -> None:
    """The spectrometer's reading of each particle: one track, its momentum measured with
    Gaussian relative resolution `resolution` (sigma_p / p), floored at zero."""
    p, trk = track
    z = rng.standard_normal(len(p_true), dtype=np.float32)
    z *= np.float32(resolution)
    z += 1
    beam[:, p] = np.maximum(p_true * z, 0)
    beam[:, trk] = 1.0


def _scale(e: np.ndarray, mask: np.ndarray, factor: Callable[[int], np.ndarray]) -> None:
    idx = np.flatnonzero(mask)
    if len(idx):
        e[idx] *= factor(len(idx)).astype(np.float32)


def _lateral(rng: np.random.Generator, n: int, centre: float) -> np.ndarray:
    """(n, 9) shares of a 3x3 cluster: centre ~ `centre`, edges 4x the corners, fluctuating."""
    u = rng.random((n, 9), dtype=np.float32)
    return lateral_shares(u, rng.standard_normal(n, dtype=np.float32), centre)


#: boards a beam-halo particle crosses (the others never see it)
HALO_BOARDS = ("VETO", "HCAL")


def halo_block(layout: Layout, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Deposits (GeV) of `n` beam-halo particles, (n, nch) float32 per board of HALO_BOARDS.

    A halo particle is a muon of the beam line travelling off axis: it misses S1-S3, the
    ECAL and the SRD (it never triggers), and crosses one VETO counter (a MIP in both its
    PMTs) and one line of HCAL1..3 cells (a MIP in each), chosen uniformly
    (decision 0003, "Pileup")."""
    veto_lines = layout.veto_pmts  # (3, 2)
    hcal_lines = layout.hcal[:3].T  # (9, 3): one cell in each of HCAL1..3
    out = {}
    for board, lines, mip in (("VETO", veto_lines, VETO_MIP), ("HCAL", hcal_lines, HCAL_MIP)):
        dep = np.zeros((n, layout.n[board]), np.float32)
        rows = lines[rng.integers(0, len(lines), n)]  # (n, L) channels crossed
        dep[np.arange(n)[:, None], rows] = _mip(rng, rows.shape, mip)
        out[board] = dep
    return out
