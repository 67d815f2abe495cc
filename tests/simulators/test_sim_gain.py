"""ECAL gain changes the calibration does not know of: ecal_gain_scale, ecal_gain_drift and
ecal_drift_cell scale the ECAL amplitudes (the deposits, the particles and the noise stay
the same, seed for seed), and the truth stream says what was applied."""

from __future__ import annotations

import numpy as np
import pytest

from daq.errors import ConfigError
from daq.wire import Kind
from simulators.config import SimConfig
from simulators.errors import SimulatorError
from simulators.frontend import TRUTH, FrontEnds
from tests.simulators.sim_helpers import dense, detector, run_spill, simulator

BASE = {"intensity": 6e6, "generated_s": 0.002, "seed": 4}


def _ecal(**cfg: object) -> np.ndarray:
    """Dense ECAL amplitudes (ADC counts) of spill 2 (feature mode)."""
    boards, _ = run_spill(simulator(**BASE, **cfg), spill=2)
    nch = len(detector()[0].board("ECAL").channels)
    return dense(boards["ECAL"], "hit_amp", nch).astype(np.float64)


def _channel(name: str) -> int:
    return [c.name for c in detector()[0].board("ECAL").channels].index(name)


def test_gain_factor_of_a_spill() -> None:
    c = SimConfig.parse({"ecal_gain_scale": 0.92, "ecal_gain_drift": -0.01})
    assert c.ecal_gain_factor(3) == pytest.approx((0.92 * 0.97, 0.92 * 0.97))
    c = SimConfig.parse({"ecal_gain_scale": 0.92, "ecal_gain_drift": -0.01,
                         "ecal_drift_cell": "MAIN_2_2"})
    assert c.ecal_gain_factor(3) == pytest.approx((0.92, 0.92 * 0.97))
    assert SimConfig.parse({"ecal_gain_drift": -0.2}).ecal_gain_factor(10) == (0.5, 0.5)  # floor
    with pytest.raises(ConfigError, match="ecal_gain_scale"):
        SimConfig.parse({"ecal_gain_scale": 2.0})


def test_an_unknown_drift_cell_is_named() -> None:
    with pytest.raises(SimulatorError, match="'MAIN_9_9' is not an ECAL channel"):
        simulator(ecal_drift_cell="MAIN_9_9", ecal_gain_drift=0.01)


def test_gain_scale_scales_the_ecal_amplitudes() -> None:
    """Amplitudes are deposit x gain + noise, rounded: summed over the spot cell's hits
    (thousands of counts each) the ratio is the scale to far better than 0.1 %."""
    nom, low = _ecal(), _ecal(ecal_gain_scale=0.92)
    spot = _channel("MAIN_2_2")
    hit = (nom[:, spot] > 100) & (nom[:, spot] < 3000)  # no saturation either way
    assert hit.sum() > 1000
    assert low[hit, spot].sum() / nom[hit, spot].sum() == pytest.approx(0.92, abs=1e-3)


def test_a_cell_drift_changes_that_cell_only() -> None:
    """Drift -5 %/spill on MAIN_2_2: in spill 2 that cell reads 0.90 of nominal, every
    other channel of every event is what it was, count for count."""
    nom = _ecal()
    drift = _ecal(ecal_gain_drift=-0.05, ecal_drift_cell="MAIN_2_2")
    spot = _channel("MAIN_2_2")
    others = np.ones(nom.shape[1], bool)
    others[spot] = False
    assert np.array_equal(nom[:, others], drift[:, others])
    hit = (nom[:, spot] > 100) & (nom[:, spot] < 3000)
    assert drift[hit, spot].sum() / nom[hit, spot].sum() == pytest.approx(0.90, abs=1e-3)


def test_the_truth_stream_says_the_gains_applied() -> None:
    sim = simulator(**BASE, ecal_gain_scale=0.92, ecal_gain_drift=-0.01,
                    ecal_drift_cell="MAIN_2_2")
    fe = FrontEnds(sim, spills=2, truth=True)
    metas = {em.msg.spill: em.msg.meta["ecal_gain"] for em in fe.run()
             if em.src == TRUTH and em.msg.kind is Kind.SLICE}
    assert metas == {0: {"scale": 0.92, "MAIN_2_2": 0.92},
                     1: {"scale": 0.92, "MAIN_2_2": pytest.approx(0.92 * 0.99)}}


def test_demo_takes_simulator_settings() -> None:
    """`na64daq demo --set ecal_gain_scale=0.92`: the demo's simulator gets the gain drop;
    a malformed item is refused by name."""
    from daq.app_commands import _demo_config
    from daq.cli import build_parser

    args = build_parser().parse_args(["demo", "--set", "ecal_gain_scale=0.92"])
    assert SimConfig.parse(_demo_config(args).simulator.sim).ecal_gain_scale == 0.92
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _demo_config(build_parser().parse_args(["demo", "--set", "ecal_gain_scale"]))
