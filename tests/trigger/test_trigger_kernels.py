"""The numba kernels against the NumPy reference: identical decisions, same features."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from trigger_data import built_arrays, built_stream, detector, sim_slices

from daq.wire import Kind, Message, decode, encode
from trigger import kernels, reference
from trigger.config import TriggerConfig
from trigger.core import build_params, compute_features, decide, warm_up
from trigger.errors import SliceError
from trigger.processor import SliceProcessor

GEOM, CAL = detector()
SAMPLES = GEOM.detector.samples


def _compare(arrays: dict[str, np.ndarray], count: int, mode: str, cfg: TriggerConfig,
             *, run: int = 7, spill: int = 3, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    p = build_params(cfg, GEOM, CAL)
    fk = compute_features(arrays, count, mode, p, kernels)
    fr = compute_features(arrays, count, mode, p, reference)
    for b in fk.amp:
        np.testing.assert_array_equal(fk.amp[b], fr.amp[b], err_msg=b)
        np.testing.assert_array_equal(fk.npulse[b], fr.npulse[b], err_msg=b)
    np.testing.assert_allclose(fk.sums, fr.sums, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(fk.mult, fr.mult)
    np.testing.assert_array_equal(fk.sat, fr.sat)
    ck, bk = decide(fk, p, run=run, spill=spill, first=first, backend=kernels)
    cr, br = decide(fr, p, run=run, spill=spill, first=first, backend=reference)
    np.testing.assert_array_equal(ck, cr)
    np.testing.assert_array_equal(bk, br)
    return ck, bk


_sample = st.one_of(st.integers(395, 405), st.integers(0, 4095), st.just(4095), st.just(0))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wave=hnp.arrays(np.int16, st.tuples(st.integers(0, 5),
                                           st.one_of(st.just(SAMPLES), st.integers(1, 40)),
                                           st.integers(0, 40)), elements=_sample),
       thr=st.floats(1.0, 500.0), n_ped=st.integers(1, 8), masked=st.integers(0, 63),
       pulses=st.booleans())
def test_wave_board_matches_reference(wave: np.ndarray, thr: float, n_ped: int,
                                      masked: int, pulses: bool) -> None:
    n, _, nch = wave.shape  # (count, samples, nch), as on the wire
    live = np.array([(masked >> c) & 1 == 0 for c in range(nch)], np.uint8)
    outs = []
    for be in (kernels, reference):
        o = (np.empty((n, nch), np.float32), np.empty((n, nch), np.float32),
             np.empty((n, nch), np.uint8), np.empty((n, nch), np.float32),
             np.empty(n, np.uint8))
        be.wave_board(wave, live, n_ped, thr, 4095, 8, 12.5, True, pulses, *o)
        outs.append(o)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    sat = outs[0][4]
    assert list(sat) == [int(((wave[e] >= 4095).any(axis=0) & (live != 0)).any())
                         for e in range(n)]


def test_pulse_level_rounds_like_the_reference() -> None:
    # ped + thr = 399 + 5.000000000000001 rounds to 404.0: the sample 404 is a pulse at the
    # level ceil(ped + thr), although its amplitude 5.0 is below thr
    wave = np.full((1, SAMPLES, 2), 399, np.int16)
    wave[0, 12, :] = 404
    outs = []
    for be in (kernels, reference):
        o = (np.empty((1, 2), np.float32), np.empty((1, 2), np.float32),
             np.empty((1, 2), np.uint8), np.empty((1, 2), np.float32), np.empty(1, np.uint8))
        be.wave_board(wave, np.ones(2, np.uint8), 4, 5.000000000000001, 4095, 8, 12.5, True,
                      True, *o)
        outs.append(o)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(outs[0][2][0]) == [1, 1]


def _random_slice(rng: np.random.Generator, n: int, mode: str, sat_frac: float
                  ) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"ts": np.arange(n, dtype=np.int64)}
    for b in GEOM.boards:
        nch = len(b.channels)
        hit = rng.random((n, nch)) < 0.3
        amp = np.where(hit, rng.exponential(400.0, (n, nch)), rng.normal(0, 2, (n, nch)))
        amp = np.where(rng.random((n, nch)) < sat_frac, 3695.0, amp)
        if mode == "feature":
            arrays[f"{b.name}.amp"] = amp.astype(np.float32)
            arrays[f"{b.name}.tpeak"] = np.zeros((n, nch), np.float32)
            arrays[f"{b.name}.npulse"] = rng.integers(0, 4, (n, nch)).astype(np.uint8)
        else:
            w = 400.0 + rng.normal(0, 2, (n, nch, SAMPLES))
            t0 = rng.integers(0, SAMPLES - 3, (n, nch))
            for k, f in enumerate((0.5, 1.0, 0.7, 0.3)):
                np.put_along_axis(w, (t0 + k)[..., None], np.take_along_axis(
                    w, (t0 + k)[..., None], 2) + (amp * f)[..., None], 2)
            arrays[f"{b.name}.wave"] = np.ascontiguousarray(
                np.clip(w, 0, 4095).astype(np.int16).transpose(0, 2, 1))
    return arrays


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([0, 1, 2, 17, 200]),
       mode=st.sampled_from(["waveform", "feature"]), sat_frac=st.sampled_from([0.0, 0.05, 1.0]),
       pulse=st.floats(5.0, 200.0), zero=st.floats(0.0, 50.0),
       prescale=st.integers(1, 5), ecal_max=st.floats(1.0, 200.0), ps_min=st.floats(0.0, 3.0),
       masked=st.lists(st.sampled_from(["BEAM/S2", "BEAM/V1", "ECAL/PS_2_2", "HCAL/HCAL1_1_1",
                                        "ECAL/MAIN_2_2", "SRD/SRD0"]), unique=True))
def test_full_slice_matches_reference(seed: int, n: int, mode: str, sat_frac: float,
                                      pulse: float, zero: float, prescale: int,
                                      ecal_max: float, ps_min: float, masked: list[str]) -> None:
    cfg = TriggerConfig(pulse_threshold_adc=pulse, zero_threshold_adc=zero,
                        prescale_beam=prescale, prescale_random=prescale + 1,
                        prescale_calibration=prescale, ecal_max_gev=ecal_max,
                        ps_min_gev=ps_min, masked_channels=tuple(masked))
    arrays = _random_slice(np.random.default_rng(seed), n, mode, sat_frac)
    cond, bits = _compare(arrays, n, mode, cfg, first=seed % 10_000)
    assert cond.shape == bits.shape == (n,)
    assert not np.any(bits & ~cond)  # a bit fires only where its condition holds
    assert np.all(cond & 4)  # every event is a random-trigger candidate


@pytest.mark.parametrize("mode", ["waveform", "feature"])
def test_simulator_data_matches_reference(mode: str) -> None:
    events = 0
    for s in sim_slices(mode, generated_s=0.002, signal_rate=0.01):
        cfg = TriggerConfig(prescale_beam=10, prescale_calibration=3)
        _compare(built_arrays(s), s.count, mode, cfg, spill=s.spill, first=s.first)
        events += s.count
    assert events > 1000


def test_prescale_is_per_event_not_per_slice() -> None:
    cfg = TriggerConfig(prescale_beam=7, prescale_random=11, prescale_calibration=5)
    rng = np.random.default_rng(5)
    n = 3000
    arrays = _random_slice(rng, n, "feature", 0.0)
    p = build_params(cfg, GEOM, CAL)
    whole = decide(compute_features(arrays, n, "feature", p), p, run=1, spill=2, first=1000)[1]
    parts = []
    for a, b in ((0, 1), (1, 999), (999, 2500), (2500, n)):
        sub = {k: v[a:b] for k, v in arrays.items()}
        f = compute_features(sub, b - a, "feature", p)
        parts.append(decide(f, p, run=1, spill=2, first=1000 + a)[1])
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    other_spill = decide(compute_features(arrays, n, "feature", p), p, run=1, spill=3,
                         first=1000)[1]
    assert not np.array_equal(whole & 4, other_spill & 4)


def test_random_trigger_rate_is_one_in_prescale() -> None:
    n, pre = 200_000, 40
    p = build_params(TriggerConfig(prescale_random=pre), GEOM, CAL)
    f = compute_features({}, n, "feature", p)  # no board data: every board reads zero
    cond, bits = decide(f, p, run=5, spill=1, first=0)
    assert np.all(cond == 4)  # no beam condition without beam counters
    k = int(np.count_nonzero(bits & 4))
    sigma = np.sqrt(n * (1 / pre) * (1 - 1 / pre))
    assert abs(k - n / pre) < 5 * sigma


def test_hash_matches_python_twin() -> None:
    xs = [0, 1, 2**63, 2**64 - 1, 123456789]
    got = [int(kernels._mix(np.uint64(x))) for x in xs]
    assert got == [reference.mix_int(x) for x in xs]
    np.testing.assert_array_equal(reference.mix(np.array(xs, np.uint64)),
                                  np.array(got, np.uint64))


def test_disabled_types_never_fire() -> None:
    cfg = TriggerConfig(enabled=("physics",), prescale_beam=1, prescale_random=1)
    arrays = _random_slice(np.random.default_rng(1), 500, "feature", 0.0)
    cond, bits = _compare(arrays, 500, "feature", cfg)
    assert np.all((bits & 0xFE) == 0) and np.any(cond & 2)


def test_bad_array_shape_is_a_slice_error() -> None:
    p = build_params(TriggerConfig(), GEOM, CAL)
    bad = {"ECAL.wave": np.zeros((3, SAMPLES, 59), np.int16)}
    with pytest.raises(SliceError) as ei:
        compute_features(bad, 3, "waveform", p)
    assert ei.value.reason == "shape" and "ECAL.wave" in str(ei.value)
    with pytest.raises(SliceError, match="mode"):
        compute_features({}, 3, "other", p)


def test_warm_up_compiles_every_specialisation_a_wire_slice_needs() -> None:
    warm_up(GEOM, CAL)
    dispatchers = [kernels.wave_board, kernels.feature_sat, kernels.accumulate,
                   kernels.multiplicity, kernels.decide]
    before = [len(cast(Any, d).signatures) for d in dispatchers]
    proc = SliceProcessor(GEOM, CAL)
    for mode in ("feature", "waveform"):
        msg = next(m for m in built_stream(mode, spills=1, generated_s=0.0005)
                   if m.kind is Kind.SLICE)
        wire: Message = decode([bytes(memoryview(f)) for f in encode(msg)])
        assert not wire.arrays["ts"].flags.writeable  # as a worker receives it
        res = proc.process(wire)
        assert res.features.count == msg.count
    assert [len(cast(Any, d).signatures) for d in dispatchers] == before
