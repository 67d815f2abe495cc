"""Compiled steps of the particle generation against their NumPy references, bit for bit."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from simulators.calibrate import to_adc, to_adc_reference
from simulators.physics import Particles, generate_block
from simulators.showers import (
    lateral_shares,
    lateral_shares_reference,
    split_srd,
    split_srd_reference,
    spread_shower,
    spread_shower_reference,
)
from tests.simulators.sim_helpers import simulator

FAST_HYPOTHESIS = settings(max_examples=100, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])


def _same_bits(got: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, what
    assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=what)


@FAST_HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300),
       centre=st.sampled_from([0.75, 0.8, 0.5, 0.95]))
def test_lateral_shares(seed: int, n: int, centre: float) -> None:
    rng = np.random.default_rng(seed)
    u = rng.random((n, 9), dtype=np.float32)
    z = rng.standard_normal(n, dtype=np.float32) * np.float32(rng.choice([1.0, 30.0]))
    ref_u, ref_z = u.copy(), z.copy()
    _same_bits(lateral_shares(u, z, centre), lateral_shares_reference(ref_u, ref_z, centre))
    _same_bits(z, ref_z)


@FAST_HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), m=st.integers(1, 7))
def test_split_srd(seed: int, n: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    u = rng.random((n, m), dtype=np.float32)
    total = rng.lognormal(-4, 0.7, n).astype(np.float32)
    total[rng.random(n) < 0.2] = 0
    got, ref = np.zeros((n, m), np.float32), np.zeros((n, m), np.float32)
    split_srd(u.copy(), total, got)
    split_srd_reference(u, total, ref)
    _same_bits(got, ref)


@FAST_HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300))
def test_spread_shower(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    cells = rng.permutation(60)
    energy = (rng.random(n, dtype=np.float32) * np.float32(120))
    share = rng.random(n, dtype=np.float32) * np.float32(0.3)
    lateral = rng.random((n, 9), dtype=np.float32)
    got, ref = np.zeros((n, 60), np.float32), np.zeros((n, 60), np.float32)
    spread_shower(got, cells[:9], cells[9:18], energy, share, lateral)
    spread_shower_reference(ref, cells[:9], cells[9:18], energy, share, lateral)
    _same_bits(got, ref)


def test_to_adc() -> None:
    # every species and process, so every board has deposits
    sim = simulator(hadron_fraction=0.2, muon_fraction=0.1, dimuon_rate=0.1, signal_rate=0.1,
                    upstream_loss_rate=0.1)
    for seed in range(3):
        blk = generate_block(sim.cfg, sim.layout, np.random.default_rng(seed), 20_000 + seed)
        ref_blk = copy.deepcopy(blk)
        got = to_adc(blk, sim.calib.gain, sim.sum_spec)
        ref = to_adc_reference(ref_blk, sim.calib.gain, sim.sum_spec)
        assert got.keys() == ref.keys() == sim.sum_spec.keys()
        for name, v in ref.items():
            _same_bits(got[name], v, name)
        for board in blk.dep:
            _same_bits(blk.dep[board], ref_blk.dep[board], board)
            assert_array_equal(blk.touched[board], ref_blk.touched[board])
            assert_array_equal(blk.reach[board], ref_blk.reach[board])


@FAST_HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 40), nch=st.integers(1, 256))
def test_to_adc_sums_any_board_width(seed: int, n: int, nch: int) -> None:
    # NumPy adds a row pairwise from 8 values on and halves it beyond 128; a subset of
    # columns, left to right
    rng = np.random.default_rng(seed)
    dep = np.where(rng.random((n, nch)) < 0.5, rng.exponential(3.0, (n, nch)), 0.0)
    blk = Particles(np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.float32),
                    np.zeros(n, np.float32), {"X": dep.astype(np.float32)}, {})
    subset = rng.permutation(nch)[:rng.integers(1, nch + 1)]
    spec = {"all": ("X", [None]), "some": ("X", [subset, subset[::-1]])}
    gain = {"X": rng.uniform(1, 100, nch).astype(np.float32)}
    ref_blk = copy.deepcopy(blk)
    got, ref = to_adc(blk, gain, spec), to_adc_reference(ref_blk, gain, spec)
    for name, v in ref.items():
        _same_bits(got[name], v, name)
    _same_bits(blk.dep["X"], ref_blk.dep["X"])
