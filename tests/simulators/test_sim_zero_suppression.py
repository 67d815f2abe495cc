"""Zero-suppressed readout: what the boards send is the dense readout restricted, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from daq.errors import ConfigError
from daq.geometry import Board, reco_window
from daq.hits import FEATURE_HITS, T_UNIT_NS, WAVE_HITS, check, sparsify
from daq.wire import Kind
from simulators.config import SimConfig
from simulators.errors import SimulatorError
from simulators.features import features, features_dense, loud_bits
from simulators.frontend import FrontEnds
from simulators.generator import MAX_HIT_CHANNELS, Simulator
from simulators.readout import (
    FAST,
    SLOW,
    Sampling,
    gates,
    noise_pool,
    waveform_hits,
    waveforms,
)
from tests.simulators.sim_helpers import detector, simulator

SAMPLES, SAMPLE_NS, TRIG, ADC_MAX = 32, 12.5, 8, 4095
CLOCK = Sampling(SAMPLES, SAMPLE_NS, TRIG)


def _case(seed: int, *, n: int = 400, nch: int = 7, scale: float = 800.0) -> tuple:
    """Particles with pileup; channel 6 never sees a deposit (noise only)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 40_000, n))
    dep = np.where(rng.random((n, nch)) < 0.4, rng.exponential(scale, (n, nch)), 0.0)
    dep[:, 6] = 0.0
    dep[rng.random(n) < 0.3] = 0.0  # particles that leave nothing in this board
    ev = np.arange(20, n - 20, dtype=np.int64)
    lo, hi = gates(t, ev, 200.0)
    return t, ev, lo, hi, dep.astype(np.float32)


def _expected_features(dense: dict[str, np.ndarray], zs: float
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The dense features rounded as the contract says, restricted to the channels >= zs."""
    amp = np.floor(dense["amp"].astype(np.float64) + 0.5)
    t = np.rint(dense["tpeak"].astype(np.float64) / T_UNIT_NS)
    return sparsify(amp >= zs, {
        "hit_amp": np.clip(amp, -32768, 32767).astype(np.int16),
        "hit_t": np.clip(t, -32768, 32767).astype(np.int16),
        "hit_np": dense["npulse"]})


@pytest.mark.parametrize(("zs", "noise", "amp_max"), [
    (6.0, 2.0, 3695.0),  # the default threshold and noise
    (6.5, 2.0, 3695.0),  # a threshold between integers: rounded amplitude >= 7
    (0.0, 2.0, 3695.0),  # every channel whose rounded amplitude is not negative
    (6.0, 5.0, 900.0),  # much noise above zs (the loud-channel merge) and saturation
    (100.0, 2.0, 3695.0),
])
def test_feature_hits_are_the_dense_amplitudes_at_or_above_zs(zs: float, noise: float,
                                                               amp_max: float) -> None:
    t, ev, lo, hi, dep = _case(7)
    assert (hi - lo > 1).any() and (hi - lo == 1).any(), "the case mixes lone and pileup events"
    rng = np.random.default_rng(8)
    pool = noise_pool(rng, noise, 4096 + dep.shape[1])
    offs = rng.integers(0, 4096, len(ev))
    for shape in (FAST, SLOW):
        args = (ev, t, lo, hi, dep, shape, pool, offs, 5 * noise, amp_max)
        dense = features_dense(*args, sampling=CLOCK)
        nhit, hits = _expected_features(dense, zs)
        got = features(*args, zs, sampling=CLOCK)
        assert check(got, len(ev), dep.shape[1], FEATURE_HITS) == len(hits["hit_ch"])
        assert_array_equal(got["nhit"], nhit)
        for name in FEATURE_HITS:
            assert_array_equal(got[name], hits[name], err_msg=name)
    assert len(hits["hit_ch"]) > 0


def test_feature_hits_with_the_deposit_notes_of_the_simulator() -> None:
    # the simulator passes the loud bitmap and which particles and channels have deposits;
    # a superset of channels changes nothing
    t, ev, lo, hi, dep = _case(9)
    rng = np.random.default_rng(10)
    pool = noise_pool(rng, 3.0, 4096 + dep.shape[1])
    offs = rng.integers(0, 4096, len(ev))
    args = (ev, t, lo, hi, dep, SLOW, pool, offs, 15.0, 3695.0, 6.0)
    ref = features(*args, sampling=CLOCK)
    touched = (dep > 0).any(axis=1).astype(np.uint8)
    for reach in ((dep > 0).any(axis=0).astype(np.uint8), np.ones(dep.shape[1], np.uint8)):
        got = features(*args, None, loud_bits(pool, 6.0), (touched, reach), sampling=CLOCK)
        for name, v in ref.items():
            assert_array_equal(got[name], v, err_msg=name)


def test_feature_amplitudes_clip_at_amp_max_and_int16() -> None:
    t, ev, lo, hi, dep = _case(11, scale=40_000.0)
    pool = np.zeros(4096 + dep.shape[1], np.float32)
    offs = np.zeros(len(ev), np.int64)
    for amp_max, top in ((3695.0, 3695), (60_000.0, 32767)):
        got = features(ev, t, lo, hi, dep, SLOW, pool, offs, 10.0, amp_max, 6.0,
                       sampling=CLOCK)
        assert got["hit_amp"].max() == top


def _wave_case(ped: np.ndarray) -> tuple:
    t, ev, lo, hi, dep = _case(12)
    rng = np.random.default_rng(13)
    pool = noise_pool(rng, 2.0, 4096 + dep.shape[1] * SAMPLES)
    offs = rng.integers(0, 4096, len(ev))
    return (ev, t, lo, hi, dep, SLOW, ped, pool, offs, SAMPLES, SAMPLE_NS, TRIG, ADC_MAX)


@pytest.mark.parametrize("ped", [np.full(7, 400.0), np.linspace(390.3, 410, 7)])
@pytest.mark.parametrize("zs", [6.0, 40.0])
def test_wave_hits_are_the_full_waveforms_of_the_kept_channels(ped: np.ndarray,
                                                               zs: float) -> None:
    args = _wave_case(ped)
    full = waveforms(*args)
    w0, w1 = TRIG - 1, TRIG + 3
    got = waveform_hits(*args, zs, window=(w0, w1))
    # kept: the window's largest sample minus the calibration pedestal (the trigger's)
    w = full.astype(np.float64)
    nhit, hits = sparsify(w[:, w0:w1].max(axis=1) - ped >= zs, {"hit_wave": full})
    assert check(got, len(args[0]), 7, WAVE_HITS, samples=SAMPLES) == len(hits["hit_ch"]) > 0
    assert_array_equal(got["nhit"], nhit)
    assert_array_equal(got["hit_ch"], hits["hit_ch"])
    assert_array_equal(got["hit_wave"], hits["hit_wave"])


def test_simulated_wave_hits_equal_full_waveforms_of_the_same_seed() -> None:
    cfg = {"generated_s": 0.002, "seed": 4, "mode": "waveform", "slice_events": 512}
    full = simulator(**cfg)
    zs = simulator(**cfg, zero_suppress=True, zs_adc=8.0)
    det = full.geom.detector
    kept = 0
    for a, b in zip(full.slices(full.plan(0)), zs.slices(zs.plan(0)), strict=True):
        assert_array_equal(a.ts, b.ts)
        for board, arrays in a.boards.items():
            w0, w1 = reco_window(full.geom.board(board), det)
            w = arrays["wave"].astype(np.float64)
            ped = full.calib.pedestal[board].astype(np.float64)
            nhit, hits = sparsify(w[:, w0:w1].max(axis=1) - ped >= 8.0,
                                  {"hit_wave": arrays["wave"]})
            got = b.boards[board]
            check(got, b.count, full.geom.n_channels(board), WAVE_HITS,
                  samples=full.geom.detector.samples)
            assert_array_equal(got["nhit"], nhit)
            assert_array_equal(got["hit_ch"], hits["hit_ch"])
            assert_array_equal(got["hit_wave"], hits["hit_wave"])
            kept += len(hits["hit_ch"])
    assert kept > 0


@pytest.mark.parametrize("value", [-1.0, 4097.0])
def test_zs_adc_out_of_bounds_is_refused_naming_the_field(value: float) -> None:
    with pytest.raises(ConfigError) as err:
        SimConfig.parse({"zs_adc": value})
    assert err.value.field == "zs_adc" and "zs_adc" in str(err.value)


@pytest.mark.parametrize(("cfg", "zs"), [
    ({"mode": "feature"}, 6.0),
    ({"mode": "feature", "zs_adc": 10.0}, 10.0),
    ({"mode": "waveform", "zero_suppress": True, "zs_adc": 8.5}, 8.5),
    ({"mode": "waveform"}, None),
])
def test_slice_meta_carries_zs_adc_when_the_board_suppresses(cfg: dict, zs: float | None
                                                             ) -> None:
    sim = simulator({"empty_board": "VETO", "empty_rate": 0.5}, generated_s=0.002, seed=3,
                    slice_events=512, **cfg)
    slices = [em.msg for em in FrontEnds(sim, spills=1).run() if em.msg.kind is Kind.SLICE]
    assert slices
    for m in slices:
        assert m.meta.get("zs_adc") == zs and m.meta["mode"] == cfg["mode"]
        if list(m.arrays) == ["ts"]:  # the empty fragment fault: every channel read nothing
            assert m.board == "VETO"
            continue
        nch, samples = sim.geom.n_channels(m.board), sim.geom.detector.samples
        if zs is None:
            assert m.arrays["wave"].shape == (m.count, samples, nch)
        else:
            spec = FEATURE_HITS if cfg["mode"] == "feature" else WAVE_HITS
            assert list(m.arrays) == ["ts", "nhit", *spec]
            check(m.arrays, m.count, nch, spec, samples=samples)
    assert any(list(m.arrays) == ["ts"] for m in slices)


def test_a_board_too_wide_for_hits_is_refused_when_it_suppresses() -> None:
    geom, calib = detector()
    wide = Board.model_validate({"name": "WIDE", "window_ns": 50.0, "channels": [
        {"name": f"C{i}", "group": "X"} for i in range(MAX_HIT_CHANNELS + 1)]})
    geom = geom.model_copy(update={"boards": [*geom.boards, wide]})
    for cfg in ({"mode": "feature"}, {"mode": "waveform", "zero_suppress": True}):
        with pytest.raises(SimulatorError, match="WIDE"):
            Simulator(SimConfig.parse(cfg), geom, calib)
