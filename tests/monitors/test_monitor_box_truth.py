"""The signal box, sideband C and the dimuons at 6e6 e-/spill against the simulator's truth.

A fraction of a spill (0.08 s: pileup as at full intensity) with the rare processes scaled
up (A' and dimuons 2e-3 per electron), fixed seed. The truth predictions are made from the
simulator's truth (process, true momentum, each particle's own energy sums, particle
times), not from the features: an event free of pileup (no other particle's pulse reaches
any board's reconstruction window, tests/pileup_truth.alone_in_windows) is expected in a
region exactly when its own energies and true momentum are. The momentum
tail of the upstream-loss electrons is computed from the Gaussian resolution (1 %).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from monitor_truth import detector, simulate
from prometheus_client import CollectorRegistry, generate_latest

from daq.wire import Message
from monitors import webdata
from monitors.aggregate import MonitorInputError, RunAnalysis
from monitors.analysis import analyze
from monitors.config import MonitorConfig
from monitors.identify import dimuon, sideband_c, signal_box
from monitors.metrics import MonitorMetrics
from simulators.physics import Process
from tests import pileup_truth as pt

OPEN = MonitorConfig(blind=False)
#: cut (i) lifted: every momentum, any number of tracks
NO_CUT_I = OPEN.model_copy(update={"signal_p_min_gev": 0.0, "signal_p_max_gev": 1000.0,
                                   "signal_max_tracks": 255})
RESOLUTION = 0.01  # SimConfig.tracker_resolution
FEATURES = ("e_ecal", "e_ps", "e_hcal", "e_veto", "e_srd", "mult", "sat", "p", "ntrk", "missing")


@pytest.fixture(scope="module")
def run() -> tuple[list[Message], dict[str, np.ndarray], dict[str, np.ndarray]]:
    msgs, truth, cfg = simulate(intensity=6e6, generated_s=0.08, seed=5, signal_rate=2e-3,
                                dimuon_rate=2e-3)
    assert cfg.tracker_resolution == RESOLUTION
    f = {k: np.concatenate([m.arrays[k] for m in msgs if m.kind == "features"])
         for k in FEATURES}
    return msgs, truth, f


def _clean(truth: dict[str, np.ndarray]) -> np.ndarray:
    """No other particle's pulse reaches the reconstruction window of any board."""
    return pt.alone_in_windows(detector()[0], truth)


def _identified(truth: dict[str, np.ndarray], cfg: MonitorConfig) -> np.ndarray:
    """The particle's own SRD and preshower energies pass the electron tag."""
    return ((truth["e_srd"] >= cfg.srd_min_gev) & (truth["e_srd"] <= cfg.srd_max_gev)
            & (truth["e_ps"] >= cfg.ps_min_gev))


def _in_window(p_true: np.ndarray, cfg: MonitorConfig) -> np.ndarray:
    """Probability that the measured momentum falls in the box's window (Gaussian)."""
    p = p_true.astype(np.float64)
    sigma = RESOLUTION * np.maximum(p, 1e-9)
    phi = np.vectorize(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))))
    return phi((cfg.signal_p_max_gev - p) / sigma) - phi((cfg.signal_p_min_gev - p) / sigma)


def _poisson_max(mu: float, confidence: float = 0.9973) -> int:
    """The least k with P(X <= k) >= confidence, X ~ Poisson(mu)."""
    k, term = 0, math.exp(-mu)
    total = term
    while total < confidence:
        k += 1
        term *= mu / k
        total += term
    return k


def _measured_with_resolution(truth: dict, f: dict, *, at_least: int) -> None:
    """The momenta of the events alone in every window hold the spectrometer's resolution,
    each with one track."""
    clean = _clean(truth)
    r = f["p"][clean] / truth["p_true"][clean] - 1
    n = len(r)
    assert n > at_least
    # sample RMS and mean against sigma_p / p: their standard errors are s/sqrt(2n), s/sqrt(n)
    assert abs(float(r.std()) - RESOLUTION) < 3 * RESOLUTION / math.sqrt(2 * n)
    assert abs(float(r.mean())) < 3 * RESOLUTION / math.sqrt(n)
    assert (f["ntrk"][clean] == 1).all()


def test_the_spectrometer_measures_with_its_resolution(run: tuple) -> None:
    _, truth, f = run
    _measured_with_resolution(truth, f, at_least=40000)
    near, _ = pt.beam_near_window(detector()[0], truth)
    assert (near[f["ntrk"] > 1]).all()  # a second track is a particle near the window
    lost = truth["process"] == Process.UPSTREAM_LOSS
    assert (truth["p_true"][lost] < truth["e_true"][lost]).all()  # the loss is upstream


def test_the_spectrometer_reads_alike_from_waveforms() -> None:
    msgs, truth, _ = simulate(intensity=6e6, generated_s=0.015, seed=5, mode="waveform")
    f = {k: np.concatenate([m.arrays[k] for m in msgs if m.kind == "features"])
         for k in ("p", "ntrk")}
    _measured_with_resolution(truth, f, at_least=8000)


def test_box_holds_the_injected_a_prime_and_no_upstream_loss(run: tuple) -> None:
    _, truth, f = run
    proc, clean = truth["process"], _clean(truth)
    box = signal_box(f, OPEN)
    a_prime = proc == Process.SIGNAL
    predicted = (a_prime & clean & _identified(truth, OPEN)
                 & (truth["e_ecal"] < OPEN.signal_ecal_max_gev))
    assert int(predicted.sum()) > 40
    # every pileup-free A' whose own energies are in the box is in it, and no other; but for
    # E_PS below twice the cut, where the zero threshold (10 ADC, 0.067 GeV a preshower
    # cell) can leave the spot cell alone (at least half the cluster, physics._lateral)
    sure = ~predicted | (truth["e_ps"] >= 2 * OPEN.ps_min_gev)
    np.testing.assert_array_equal((box & a_prime & clean)[sure], predicted[sure])
    # upstream-loss electrons: only the momentum tail; without cut (i) the box is full of them
    lost = proc == Process.UPSTREAM_LOSS
    candidates = signal_box(f, NO_CUT_I) & lost
    tail = float(_in_window(truth["p_true"][candidates], OPEN).sum())
    assert int(candidates.sum()) > 20
    assert int((box & lost).sum()) <= _poisson_max(tail)
    assert not (box & (proc == Process.NORMAL)).any() and not (box & (proc == Process.DIMUON)).any()
    assert analyze(_msgs(run), OPEN).totals().signal_box == int(box.sum())  # the kernel's


def test_sideband_c_against_truth(run: tuple) -> None:
    _, truth, f = run
    proc, clean = truth["process"], _clean(truth)
    c = sideband_c(f, OPEN)
    e = truth["e_ecal"]
    a_prime = proc == Process.SIGNAL
    predicted = (a_prime & clean & _identified(truth, OPEN) & (e >= OPEN.signal_ecal_max_gev)
                 & (e < OPEN.trigger_ecal_max_gev))
    assert int(predicted.sum()) > 15
    np.testing.assert_array_equal(c & a_prime & clean, predicted)
    lost = proc == Process.UPSTREAM_LOSS
    near = sideband_c(f, NO_CUT_I) & lost  # E_ECAL up to 90 GeV: momenta up to ~90 GeV
    assert int((c & lost).sum()) <= _poisson_max(float(_in_window(truth["p_true"][near],
                                                                  OPEN).sum()))
    assert int(near.sum()) > 10
    # the counter of the monitors is the same definition
    assert analyze(_msgs(run), OPEN).totals().sideband_c == int(c.sum())


def test_dimuons_against_truth(run: tuple) -> None:
    msgs, truth, f = run
    proc, clean = truth["process"], _clean(truth)
    sel = dimuon(f, OPEN)
    mod = truth["e_hcal"]
    two_mips = ((mod >= OPEN.dimuon_module_min_gev)
                & (mod <= OPEN.dimuon_module_max_gev)).sum(axis=1) >= OPEN.dimuon_min_modules
    dimu = proc == Process.DIMUON
    predicted = (dimu & clean & _identified(truth, OPEN) & two_mips
                 & (truth["e_ecal"] < OPEN.trigger_ecal_max_gev))
    assert int(predicted.sum()) > 80
    np.testing.assert_array_equal(sel & clean, predicted)
    assert not (sel & ~dimu).any()  # no beam muon, hadron or electron is taken for a pair
    tot = analyze(msgs, OPEN).totals()
    assert tot.dimuons == int(sel.sum())
    assert tot.eot is not None and tot.dimuons_per_eot == pytest.approx(tot.dimuons / tot.eot)


def _msgs(run: tuple) -> list[Message]:
    return run[0]


def test_blind_by_default_and_open_when_asked(run: tuple) -> None:
    msgs, _, f = run
    in_box = int(signal_box(f, OPEN).sum())
    assert in_box > 0
    for cfg, shown in ((MonitorConfig(), False), (OPEN, True)):
        ra = analyze(msgs, cfg)
        assert cfg.blind is not shown
        assert ra.totals().signal_box == (in_box if shown else None)
        assert all((s.signal_box is not None) is shown for s in ra.summaries)
        reg = CollectorRegistry()
        mm = MonitorMetrics(reg, cfg)
        mm.on_spill(ra.summaries[-1], None, now=1.0)
        text = generate_latest(reg).decode()
        assert ("na64_signal_box_events{" in text) is shown
        assert "na64_sideband_c_events{" in text and "na64_dimuon_events{" in text
        plane = webdata.spectra_docs(ra.run_spectra, cfg, scope="run", run=1, spill=None)["plane"]
        box = webdata.regions(cfg)["signal"]
        ex, eh = (np.array(a["edges"]) for a in plane["axes"])
        counts = np.array(plane["counts"])
        over = np.ix_(ex[:-1] < box["ecal_hi"], eh[:-1] < box["hcal_hi"])
        assert (int(counts[over].sum()) > 0) is shown
        # the ROOT form of the page is the same shown plane
        root = webdata.jsroot(webdata.shown(ra.run_spectra, cfg).plane, "plane")
        assert root["fEntries"] == plane["entries"]
        complete = ra.totals().events - ra.totals().incomplete_events
        assert (plane["entries"] == complete) is shown


def test_a_stream_without_the_spectrometer_is_counted_without_cut_i(run: tuple) -> None:
    msgs, _, f = run
    old = [replace(m, arrays={k: v for k, v in m.arrays.items() if k not in ("p", "ntrk")})
           for m in msgs]
    tot = analyze(old, OPEN).totals()
    assert tot.untracked_events == int((f["missing"] == 0).sum()) > 0
    no_track = {k: v for k, v in f.items() if k not in ("p", "ntrk")}
    assert tot.signal_box == int(signal_box(no_track, OPEN).sum())
    assert tot.signal_box == int(signal_box(f, NO_CUT_I).sum()) > int(signal_box(f, OPEN).sum())
    assert analyze(msgs, OPEN).totals().untracked_events == 0
    half = replace(msgs[0], arrays={k: v for k, v in msgs[0].arrays.items() if k != "ntrk"})
    ra = RunAnalysis(OPEN)
    with pytest.raises(MonitorInputError, match="lack 'ntrk'"):  # both or neither
        ra.feed(half)
    assert ra.refused == {"arrays": 1}
