"""Boards timed by their pulse (`TriggerConfig.timed_boards`, decision 0005): a channel adds
to the energy sums only when a pulse peaks in its reconstruction window, in every layout."""

from __future__ import annotations

import numpy as np
import pytest
from test_trigger_kernels import assert_same_features
from trigger_data import detector, zero_suppress

from daq.errors import ConfigError
from daq.geometry import pulse_shape, reco_window
from trigger import reference
from trigger.config import TriggerConfig, parse_config
from trigger.core import Features, build_params, compute_features

GEOM, CAL = detector()
DET = GEOM.detector
SRD = GEOM.board("SRD")
NCH = len(SRD.channels)
#: where each event's one pulse peaks from the trigger sample, ns: in time (the beam phase
#: puts it up to a sample late), an earlier particle's falling tail, a later one's rising
#: edge (both reach the window: a few hundred ADC of a 1000 ADC pulse)
IN_TIME = (0.0, 6.0, 12.0)
TAIL, EDGE = (-30.0,), (30.0,)
PEAKS = IN_TIME + TAIL + EDGE
ADC = 1000.0


def _waves() -> np.ndarray:
    """SRD waveforms (event, sample, channel), no noise: event i one ADC-sized pulse in every
    channel, peaking PEAKS[i] after the trigger sample."""
    t = (np.arange(DET.samples) - DET.trigger_sample) * DET.sample_ns
    shape = pulse_shape(t[None, :] - np.array(PEAKS)[:, None], SRD.pulse_tp_ns)
    ped = CAL.pedestal["SRD"].astype(np.float64)
    return np.rint(ped + ADC * shape[:, :, None]).astype(np.int16)


def _layouts() -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """The same pulses as full and zero-suppressed waveforms, and as feature hits with the
    front end's pulse counts in the window (the trigger's definition on the same samples)."""
    wave = _waves()
    w0, w1 = reco_window(SRD, DET)
    x = wave.astype(np.int64)
    peak = (x[:, 1:-1] > x[:, :-2]) & (x[:, 1:-1] >= x[:, 2:])  # samples 1 .. n - 2
    npulse = peak[:, w0 - 1:w1 - 1].sum(axis=1).astype(np.uint8)
    amp = (x[:, w0:w1].max(axis=1) - CAL.pedestal["SRD"]).astype(np.float32)
    n = len(PEAKS)
    feat = {"SRD.amp": amp, "SRD.tpeak": np.zeros_like(amp), "SRD.npulse": npulse}
    full = {"SRD.wave": wave}
    return {"wave": ("waveform", full), "wave_zs": ("waveform", zero_suppress(full, n)),
            "feature": ("feature", zero_suppress(feat, n))}


def _features(arrays: dict[str, np.ndarray], mode: str, cfg: TriggerConfig) -> Features:
    p = build_params(cfg, GEOM, CAL)
    f = compute_features(arrays, len(PEAKS), mode, p)
    assert_same_features(f, compute_features(arrays, len(PEAKS), mode, p, reference))
    return f


@pytest.mark.parametrize("layout", ["wave", "wave_zs", "feature"])
def test_a_timed_board_sums_only_pulses_peaking_in_its_window(layout: str) -> None:
    mode, arrays = _layouts()[layout]
    untimed = _features(arrays, mode, TriggerConfig()).arrays()["e_srd"]
    timed = _features(arrays, mode, TriggerConfig(timed_boards=("SRD",))).arrays()["e_srd"]
    n_in = len(IN_TIME)
    # untimed, the tail and the rising edge count as energy (what tagged hadrons before)
    assert (untimed > 0.002).all(), untimed
    # timed: the in-time pulse whatever the beam phase, as before; the others read nothing
    np.testing.assert_array_equal(timed[:n_in], untimed[:n_in])
    np.testing.assert_array_equal(timed[n_in:], 0.0)


def test_timed_boards_must_be_in_the_geometry_and_named_once() -> None:
    assert parse_config({"timed_boards": ["SRD"]}, GEOM).timed_boards == ("SRD",)
    with pytest.raises(ConfigError, match="timed_boards"):
        parse_config({"timed_boards": ["SRDX"]}, GEOM)
    with pytest.raises(ConfigError, match="twice"):
        parse_config({"timed_boards": ["SRD", "SRD"]})
    # the features depend on it: a shadow configuration with other timed boards recomputes
    a, b = (build_params(TriggerConfig(timed_boards=t), GEOM, CAL) for t in ((), ("SRD",)))
    assert a.feature_key != b.feature_key
