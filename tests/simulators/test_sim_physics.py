"""Statistical checks of the beam and detector model against what it was told to produce.

Fixed seeds; every tolerance is a number of standard errors computed from the sample,
never a value tuned to pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from daq.geometry import reco_window
from simulators import physics
from simulators.calibrate import to_adc
from simulators.config import SimConfig
from simulators.features import features_dense
from simulators.physics import Layout, Process, Species, generate_block
from simulators.readout import Sampling, gates
from tests.simulators.sim_helpers import alone_in_trace, dense, detector, run_spill, simulator

NSIG = 5.0  # tolerance in standard errors (a false alarm every ~2e6 runs)


def _block(n: int, **cfg: object) -> physics.Particles:
    geom, _ = detector()
    return generate_block(SimConfig.parse(cfg), Layout.of(geom), np.random.default_rng(11), n)


def _binomial_ok(k: int, n: int, p: float) -> None:
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(k - n * p) < NSIG * sigma, f"{k} of {n}, expected {n * p:.1f} +- {sigma:.1f}"


def test_species_and_process_fractions() -> None:
    n = 200_000
    p = _block(n, hadron_fraction=0.01, muon_fraction=0.002, upstream_loss_rate=0.01,
               dimuon_rate=0.005, signal_rate=0.002)
    _binomial_ok(int((p.species == Species.HADRON).sum()), n, 0.01)
    _binomial_ok(int((p.species == Species.MUON).sum()), n, 0.002)
    ne = int((p.species == Species.ELECTRON).sum())
    _binomial_ok(int((p.process == Process.UPSTREAM_LOSS).sum()), ne, 0.01)
    _binomial_ok(int((p.process == Process.DIMUON).sum()), ne, 0.005)
    _binomial_ok(int((p.process == Process.SIGNAL).sum()), ne, 0.002)
    assert not (p.process[p.species == Species.MUON]).any()
    hadron_processes = {Process.NORMAL, Process.HADRON_ECAL, Process.LEADING_NEUTRAL}
    assert set(np.unique(p.process[p.species == Species.HADRON])) <= hadron_processes


def test_electron_ecal_peak_and_resolution() -> None:
    n = 50_000
    p = _block(n, hadron_fraction=0.0, muon_fraction=0.0, upstream_loss_rate=0.0,
               dimuon_rate=0.0, signal_rate=0.0)
    e = p.dep["ECAL"].sum(axis=1).astype(np.float64)
    # E_ECAL = E (1 + sigma(E) z), E ~ N(100, 1): variance (sigma(100) 100)^2 + 1^2
    e0 = 100.0
    sigma = np.hypot(physics.ecal_resolution(np.array([e0]))[0] * e0, 0.01 * e0)
    assert abs(e.mean() - e0) < NSIG * sigma / np.sqrt(n)
    assert abs(e.std() - sigma) < NSIG * sigma / np.sqrt(2 * n)
    ps_share = p.dep["ECAL"][:, :30].sum(axis=1) / e
    assert 0.05 < ps_share.mean() < 0.2
    assert np.quantile(ps_share, 0.99) < 0.3
    assert not p.dep["VETO"].any() and not p.dep["HCAL"].any()


def test_srd_spectrum_is_the_truncated_lognormal() -> None:
    p = _block(20_000)
    ele = p.species == Species.ELECTRON
    e_srd = p.dep["SRD"].sum(axis=1)
    assert not e_srd[~ele].any(), "hadrons and muons leave no SRD signal"
    lo, hi = physics.SRD_RANGE
    assert e_srd[ele].min() >= lo * 0.999 and e_srd[ele].max() <= hi * 1.001
    dist = stats.lognorm(physics.SRD_SIGMA, scale=physics.SRD_MEDIAN_GEV)
    flo, fhi = dist.cdf(lo), dist.cdf(hi)
    res = stats.kstest(e_srd[ele], lambda x: (dist.cdf(x) - flo) / (fhi - flo))
    assert res.pvalue > 1e-4


def test_hadrons_and_muons_reach_veto_and_hcal() -> None:
    p = _block(100_000, hadron_fraction=0.05, muon_fraction=0.05)
    geom, _ = detector()
    hcal = geom.board("HCAL")
    e_h = {m: p.dep["HCAL"][:, hcal.indices(f"HCAL{m}")].sum(axis=1) for m in range(1, 5)}
    mu = p.species == Species.MUON
    had = p.species == Species.HADRON
    assert (p.dep["VETO"][mu | had].sum(axis=1) > 0).all()
    for m in range(1, 5):
        assert (e_h[m][mu] > 0).all(), f"a muon crosses HCAL{m}"
    # hadrons: most energy in HCAL1-3 on average, nothing in the zero-degree HCAL4
    e_ecal = p.dep["ECAL"].sum(axis=1)
    hsum = e_h[1] + e_h[2] + e_h[3]
    assert np.median(hsum[had] / (hsum[had] + e_ecal[had])) > 0.5
    assert not e_h[4][had].any()


# NA64's ECAL (Shashlik, 40 X0): 150 layers of 1.5 mm Pb and 1.5 mm scintillator; nuclear
# interaction lengths from the PDG tables, Pb 17.59 cm, polystyrene 77.07 cm
ECAL_LAMBDA_I = 150 * 0.15 / 17.59 + 150 * 0.15 / 77.07


@pytest.fixture(scope="module")
def hadrons() -> physics.Particles:
    """100 000 hadrons (half the beam), one in 20 interactions with a leading neutral."""
    return _block(200_000, hadron_fraction=0.5, muon_fraction=0.0, hadron_leading_neutral=0.05)


def test_hadron_interaction_probability_follows_the_ecal_depth(hadrons: physics.Particles
                                                               ) -> None:
    """P(interact in the ECAL) = 1 - exp(-L / lambda_I) = 0.79 for L = 1.57 lambda_I."""
    had = hadrons.species == Species.HADRON
    inside = np.isin(hadrons.process, [Process.HADRON_ECAL, Process.LEADING_NEUTRAL])
    _binomial_ok(int((had & inside).sum()), int(had.sum()), 1 - np.exp(-ECAL_LAMBDA_I))


def test_hadron_energy_is_shared_by_depth_between_ecal_and_hcal(hadrons: physics.Particles
                                                                 ) -> None:
    """An interaction at depth t ~ Exp(lambda_I) leaves in the ECAL the part of the shower
    profile (Gamma(3, 0.81 lambda_I)) before its end, the HCAL the rest: the mean ECAL share
    is that containment averaged over t < L, integrated here with scipy's Gamma CDF."""
    sel = hadrons.process == Process.HADRON_ECAL
    e_ecal = hadrons.dep["ECAL"][sel].sum(axis=1).astype(np.float64)
    e_hcal = hadrons.dep["HCAL"][sel].sum(axis=1).astype(np.float64)
    share = e_ecal / hadrons.e_true[sel]
    t = np.linspace(0, ECAL_LAMBDA_I, 20_001)
    w = np.exp(-t)
    contained = stats.gamma(3, scale=0.81).cdf(ECAL_LAMBDA_I - t)
    expect = float(np.trapezoid(w * contained, t) / np.trapezoid(w, t))
    assert abs(share.mean() - expect) < NSIG * share.std() / np.sqrt(sel.sum()), expect
    assert share.max() < stats.gamma(3, scale=0.81).cdf(ECAL_LAMBDA_I) * 1.2  # + resolution
    # the rest leaks into HCAL1-3 (HCAL resolution 60 %/sqrt(E) around it)
    leak = hadrons.e_true[sel] - e_ecal
    assert abs((e_hcal - leak).mean()) < NSIG * (e_hcal - leak).std() / np.sqrt(sel.sum())
    # and a hadron that does not interact crosses the ECAL as a MIP and showers in the HCAL
    mip = (hadrons.species == Species.HADRON) & (hadrons.process == Process.NORMAL)
    assert np.median(hadrons.dep["ECAL"][mip].sum(axis=1)) < 0.5


def test_leading_neutrals_escape_and_land_at_low_ecal_and_hcal(hadrons: physics.Particles
                                                               ) -> None:
    """The configured share of the interactions gives a leading neutral that takes 50-99 %
    of the energy out of the detector: the rest stays in the ECAL, the HCAL sees nothing."""
    inside = np.isin(hadrons.process, [Process.HADRON_ECAL, Process.LEADING_NEUTRAL])
    ln = hadrons.process == Process.LEADING_NEUTRAL
    _binomial_ok(int(ln.sum()), int(inside.sum()), 0.05)
    assert not hadrons.dep["HCAL"][ln].any()
    share = hadrons.dep["ECAL"][ln].sum(axis=1) / hadrons.e_true[ln]
    assert abs(share.mean() - 0.255) < NSIG * share.std() / np.sqrt(ln.sum())  # U(0.01, 0.5)
    assert share.max() < 0.5 * 1.1
    # so every one is below the signal box's E_ECAL (50 GeV) and E_HCAL (1 GeV) edges
    assert (hadrons.dep["ECAL"][ln].sum(axis=1) < 50).mean() > 0.99


@pytest.fixture(scope="module")
def full_rate_spill() -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], float]:
    # 6e6 e-/spill, 20 ms of it: the pileup of the full rate with only ~25 000 events
    sim = simulator(generated_s=0.02, seed=3, mode="feature")
    boards, truth = run_spill(sim)
    return boards, truth, sim.cfg.rate_hz


@pytest.mark.parametrize(("board", "window_ns"), [("BEAM", 60.0), ("SRD", 25.0), ("ECAL", 100.0),
                                                  ("VETO", 50.0), ("HCAL", 40.0)])
def test_pileup_count_is_poisson(full_rate_spill: tuple, board: str, window_ns: float) -> None:
    _, truth, rate = full_rate_spill
    geom, _ = detector()
    k = truth["pileup"][:, geom.board_names.index(board)].astype(np.int64)
    mu = rate * window_ns * 1e-9
    n = len(k)
    assert abs(k.mean() - mu) < NSIG * np.sqrt(mu / n)
    # Pearson chi2 over 0, 1, >=2 (expected counts all > 100)
    obs = np.array([(k == 0).sum(), (k == 1).sum(), (k >= 2).sum()])
    pois = stats.poisson(mu)
    exp = n * np.array([pois.pmf(0), pois.pmf(1), pois.sf(1)])
    assert stats.chisquare(obs, exp).pvalue > 1e-4


def test_halo_is_a_poisson_process_at_its_rate(full_rate_spill: tuple) -> None:
    """The beam halo: halo_rate x the beam rate, uniform in time and independent of the beam:
    the offset of the next halo particle after an event is exponential with that rate."""
    _, truth, rate = full_rate_spill
    h = SimConfig.parse({}).halo_rate
    after = truth["halo_dt"][:, 1].astype(np.float64)
    before = -truth["halo_dt"][:, 0].astype(np.float64)
    ok = np.isfinite(after) & np.isfinite(before)
    assert ok.mean() > 0.999 and (after[ok] >= 0).all() and (before[ok] > 0).all()
    scale = 1e9 / (h * rate)  # ns
    for x in (after[ok], before[ok]):
        assert stats.kstest(x, stats.expon(scale=scale).cdf).pvalue > 1e-4


def test_halo_crosses_one_veto_counter_and_one_hcal_line() -> None:
    geom, _ = detector()
    layout = Layout.of(geom)
    dep = physics.halo_block(layout, np.random.default_rng(4), 5000)
    assert set(dep) == {"VETO", "HCAL"}
    veto = dep["VETO"] > 0
    counters = np.array([veto[:, layout.veto_pmts[k]].all(axis=1) for k in range(3)]).T
    assert (counters.sum(axis=1) == 1).all() and (veto.sum(axis=1) == 2).all()
    hcal = dep["HCAL"] > 0
    lines = np.array([hcal[:, layout.hcal[:3, q]].all(axis=1) for q in range(9)]).T
    assert (lines.sum(axis=1) == 1).all() and (hcal.sum(axis=1) == 3).all()
    assert not hcal[:, layout.hcal[3]].any(), "the zero-degree HCAL4 sees no halo"
    # MIPs: lognormal around the model's values
    assert np.median(dep["VETO"][veto]) == pytest.approx(physics.VETO_MIP, rel=0.01)
    assert np.median(dep["HCAL"][hcal]) == pytest.approx(physics.HCAL_MIP, rel=0.01)
    # every halo line is crossed about as often (multinomial, 3 and 9 cells)
    for hits, k in ((counters.sum(axis=0), 3), (lines.sum(axis=0), 9)):
        assert stats.chisquare(hits, np.full(k, 5000 / k)).pvalue > 1e-4


@pytest.mark.parametrize("board", ["BEAM", "SRD", "ECAL", "VETO", "HCAL"])
def test_a_neighbour_deposits_what_it_deposits_when_it_triggers(board: str) -> None:
    """Energy conservation: a particle whose pulse peaks in another event's window (and
    alone in its channels there) reads, noise aside, what it reads as the triggering
    particle, on every board: no add-on, nothing lost."""
    sim = simulator(hadron_fraction=0.3, muon_fraction=0.2, dimuon_rate=0.1)
    det = sim.geom.detector
    blk = generate_block(sim.cfg, sim.layout, np.random.default_rng(6), 4000)
    to_adc(blk, sim.calib.gain, sim.sum_spec)
    # pairs (2k, 2k + 1): particle 2k + 1 follows 2k by 5 ns (its peak in the window of
    # every board, the HCAL's 3 samples too), the pair 2 us from the next;
    # the first of a pair leaves nothing on the board (an electron on the VETO, say)
    n = len(blk) // 2 * 2
    first, second = np.arange(0, n, 2), np.arange(1, n, 2)
    dep = blk.dep[board][:n].copy()
    dep[first] = 0.0
    t = np.repeat(np.arange(n // 2) * 2000.0, 2) + np.tile([0.0, 5.0], n // 2)
    ev = np.arange(n, dtype=np.int64)
    lo, hi = gates(t, ev, 100.0)
    window = reco_window(sim.geom.board(board), det)
    feats = features_dense(ev, t, lo, hi, dep, sim.shapes[board], np.zeros(64, np.float32),
                           np.zeros(n, np.int64), 10.0, np.inf,
                           sampling=Sampling(det.samples, det.sample_ns, det.trigger_sample,
                                             window))["amp"].astype(np.float64)
    # the channels it deposits in from 30 ADC on (3 x the pulse threshold, below which an
    # amplitude is the largest sample, not corrected to the peak)
    alone = dep[second] >= 30.0
    assert alone.sum() > 100
    as_neighbour = np.where(alone, feats[first], 0.0).sum(axis=1)
    as_trigger = np.where(alone, feats[second], 0.0).sum(axis=1)
    deposit = np.where(alone, dep[second], 0.0).sum(axis=1)
    np.testing.assert_allclose(as_trigger, deposit, rtol=1e-6)  # on a sample: exact
    # as a neighbour 5 ns late its peak falls between samples: corrected to the peak to
    # the correction table's precision
    np.testing.assert_allclose(as_neighbour, deposit, rtol=2e-3)


def _noise_above_zs(noise: float, zs: float) -> tuple[float, float]:
    """Mean and variance of what a channel without deposit sends, R 1(R >= zs) with
    R = round(noise x N(0, 1)): it reads 0 unless its rounded noise reaches zs."""
    k = np.arange(np.ceil(zs), np.ceil(zs) + 40 * noise + 10)
    pk = stats.norm.cdf((k + 0.5) / noise) - stats.norm.cdf((k - 0.5) / noise)
    m1, m2 = float((k * pk).sum()), float((k**2 * pk).sum())
    return m1, m2 - m1**2


def test_readout_ecal_peak_matches_truth(full_rate_spill: tuple) -> None:
    boards, truth, _ = full_rate_spill
    geom, calib = detector()
    zs = SimConfig.parse({}).zs_adc  # the spill's, a default
    # alone in the trace: no other particle's pulse reaches it (the ECAL sees no halo)
    reach = simulator().reach["ECAL"]
    sel = ((truth["species"] == Species.ELECTRON) & (truth["process"] == Process.NORMAL)
           & alone_in_trace(truth["t_ns"], reach))
    amp = dense(boards["ECAL"], "hit_amp", geom.n_channels("ECAL")).astype(np.float64)
    # a saturated channel reads amp_max (tested elsewhere); it would bias the noise check
    amp_max = geom.detector.adc_max - geom.detector.pedestal
    saturated = (amp >= amp_max).any(axis=1)
    assert saturated[sel].mean() < 0.01
    sel &= ~saturated
    gain = calib.gain["ECAL"].astype(np.float64)
    # Noise of the readout, from the model: a channel of the electron's 3 x 3 spot (its
    # shower is far above zs_adc) sends its rounded amplitude, noise variance sigma^2 + 1/12;
    # any other channel sends only rounded noise at or above zs_adc (mean m1, variance v).
    layout = Layout.of(geom)
    spot = np.union1d(layout.ecal_ps, layout.ecal_main)
    other = np.setdiff1d(np.arange(len(gain)), spot)
    noise = geom.detector.noise
    m1, v = _noise_above_zs(noise, zs)
    mu_noise = float((m1 / gain[other]).sum())
    var_noise = float(((noise**2 + 1 / 12) / gain[spot] ** 2).sum() + (v / gain[other] ** 2).sum())
    e = (amp[sel] / gain).sum(axis=1)
    n = len(e)
    sigma = np.sqrt(np.hypot(physics.ecal_resolution(np.array([100.0]))[0] * 100, 1.0) ** 2
                    + var_noise)
    # (a preshower corner cell below zs_adc, ~4 % of events, loses its < 0.05 GeV: far inside)
    assert abs(e.mean() - (100.0 + mu_noise)) < NSIG * sigma / np.sqrt(n)
    assert abs(e.std() - sigma) < NSIG * sigma / np.sqrt(2 * n)
    # per event, readout minus truth is the noise only; exactly so in the main section,
    # whose spot cells are always read out
    main = geom.board("ECAL").indices("MAIN")
    spot_m, other_m = np.intersect1d(spot, main), np.setdiff1d(main, spot)
    mu_m = float((m1 / gain[other_m]).sum())
    var_m = float(((noise**2 + 1 / 12) / gain[spot_m] ** 2).sum()
                  + (v / gain[other_m] ** 2).sum())
    diff = ((amp[sel][:, main] / gain[main]).sum(axis=1)
            - (truth["e_ecal"][sel].astype(np.float64) - truth["e_ps"][sel]))
    assert abs(diff.mean() - mu_m) < NSIG * np.sqrt(var_m / n)
    assert abs(diff.std() - np.sqrt(var_m)) < NSIG * np.sqrt(var_m / (2 * n))


def test_beam_counter_pulses_count_the_pileup(full_rate_spill: tuple) -> None:
    """The pulses the beam counters count in their window: the in-time one, when nothing
    else is near, and never more than the particles whose pulses peak near the window (a
    pulse found at a sample needs a pulse rising into it and one falling out of it: one
    peaking within a sample of it); two particles within 15 ns are one pulse, from 30 ns
    always two (test_sim_readout)."""
    boards, truth, _ = full_rate_spill
    geom, _ = detector()
    det = geom.detector
    w0, w1 = reco_window(geom.board("BEAM"), det)
    npulse = dense(boards["BEAM"], "hit_np", geom.n_channels("BEAM"))[:, 0].astype(np.int64)
    t = truth["t_ns"]
    # the window's samples sit (w0 - trig) .. (w1 - 1 - trig) samples from the trigger
    # sample, the in-time peak 0 .. 1 sample after it
    lo_ns = (w0 - 1 - det.trigger_sample - 1) * det.sample_ns
    hi_ns = (w1 - det.trigger_sample) * det.sample_ns
    near = np.zeros(len(t), np.int64)
    quiet = np.ones(len(t), bool)
    for k in range(1, 6):
        for a, b in ((slice(k, None), slice(None, -k)), (slice(None, -k), slice(k, None))):
            dt = t[b] - t[a]
            near[a] += (dt > lo_ns) & (dt < hi_ns)
            quiet[a] &= np.abs(dt) >= 60.0
    assert (npulse <= near + 1).all()
    assert (npulse[quiet] == 1).all() and quiet.sum() > 1000
    d = np.diff(t)
    gap = np.minimum(np.r_[np.inf, d], np.r_[d, np.inf])  # to the nearest other particle
    merged = (near == 1) & (gap < 15.0)
    assert merged.sum() > 100 and (npulse[merged] == 1).all()


def test_rare_processes_have_their_signatures() -> None:
    n = 40_000
    p = _block(n, upstream_loss_rate=0.05, dimuon_rate=0.05, signal_rate=0.2)
    e_ecal = p.dep["ECAL"].sum(axis=1).astype(np.float64)
    quiet = (p.dep["VETO"].sum(axis=1) == 0) & (p.dep["HCAL"].sum(axis=1) == 0)
    srd = p.dep["SRD"].sum(axis=1) > 0
    sig = p.process == Process.SIGNAL
    assert quiet[sig].all() and srd[sig].all(), "A' is invisible; the electron still radiates"
    # recoil share 1 - x, x = min(sqrt(U), 0.99): mean computed from that law, not tuned
    x = np.minimum(np.sqrt((np.arange(200_000) + 0.5) / 200_000), 0.99)
    share = e_ecal[sig] / p.e_true[sig]
    assert abs(share.mean() - (1 - x).mean()) < NSIG * share.std() / np.sqrt(sig.sum())
    # the trigger's E_ECAL < 90 GeV keeps the signal unless the A' took under ~10 %
    assert (e_ecal[sig] > 90).mean() < 0.01 + NSIG * np.sqrt(0.01 / sig.sum())
    dm = p.process == Process.DIMUON
    assert not quiet[dm].any(), "a muon pair crosses VETO and HCAL"
    ul = p.process == Process.UPSTREAM_LOSS
    assert quiet[ul].all() and (e_ecal[ul] < 0.95 * p.e_true[ul]).mean() > 0.95


def test_pileup_truth_matches_brute_force_at_high_rate() -> None:
    # 1e8 per spill (20 MHz): several neighbours per gate, and tiny slices, so gates cross
    # many slice and block boundaries
    sim = simulator(intensity=1e8, generated_s=0.0002, slice_events=7, seed=8)
    geom, _ = detector()
    plan = sim.plan(0)
    pileup = np.concatenate([s.truth["pileup"] for s in sim.slices(plan)])
    t = plan.t
    for bi, board in enumerate(geom.boards):
        d = np.abs(t[:, None] - t[None, :]) < board.window_ns / 2
        assert np.array_equal(pileup[:, bi], d.sum(axis=1) - 1), board.name
    assert pileup.max() >= 3
