"""Compiled steps of the particle generation against their NumPy references, bit for bit."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from simulators.calibrate import to_adc, to_adc_reference
from simulators.physics import Particles, generate_block
from tests.simulators.sim_helpers import simulator

FAST_HYPOTHESIS = settings(max_examples=100, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])


def _same_bits(got: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, what
    assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=what)


def test_to_adc() -> None:
    # every species and process, so every board has deposits and halos
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
        for board in blk.halo:
            _same_bits(blk.halo[board].amp, ref_blk.halo[board].amp, board)


@FAST_HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 40), nch=st.integers(1, 256))
def test_to_adc_sums_any_board_width(seed: int, n: int, nch: int) -> None:
    # NumPy adds a row pairwise from 8 values on and halves it beyond 128; a subset of
    # columns, left to right
    rng = np.random.default_rng(seed)
    dep = np.where(rng.random((n, nch)) < 0.5, rng.exponential(3.0, (n, nch)), 0.0)
    blk = Particles(np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.float32),
                    {"X": dep.astype(np.float32)}, {})
    subset = rng.permutation(nch)[:rng.integers(1, nch + 1)]
    spec = {"all": ("X", [None]), "some": ("X", [subset, subset[::-1]])}
    gain = {"X": rng.uniform(1, 100, nch).astype(np.float32)}
    ref_blk = copy.deepcopy(blk)
    got, ref = to_adc(blk, gain, spec), to_adc_reference(ref_blk, gain, spec)
    for name, v in ref.items():
        _same_bits(got[name], v, name)
    _same_bits(blk.dep["X"], ref_blk.dep["X"])
