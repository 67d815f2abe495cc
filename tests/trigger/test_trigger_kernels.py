"""The numba kernels against the NumPy reference: identical decisions, same features."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from trigger_data import (
    LAYOUTS,
    built_arrays,
    channel_pedestals,
    detector,
    random_slice,
    sim_slices,
    window_in,
    zero_suppress,
)

from daq import hits
from daq.config import content_hash
from daq.wire import Kind, Message, decode, encode
from trigger import kernels, reference
from trigger.config import TriggerConfig
from trigger.core import (
    Features,
    build_params,
    compute_features,
    decide,
    neighbour_gaps,
    select_events,
    warm_up,
)
from trigger.errors import SliceError
from trigger.processor import SliceProcessor

GEOM, CAL = detector()
SAMPLES = GEOM.detector.samples


def assert_same_features(fa: Features, fb: Features) -> None:
    """Two Features identical to the bit."""
    for name in ("sums", "mult", "sat", "beam_amp", "beam_npulse"):
        np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name), err_msg=name)
    # the float32 wire arrays, packed by each backend's feature_columns
    wa, wb = fa.arrays(kernels), fb.arrays(reference)
    assert list(wa) == list(wb)
    for name in wa:
        assert wa[name].dtype == wb[name].dtype, name
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def _compare(arrays: dict[str, np.ndarray], count: int, mode: str, cfg: TriggerConfig,
             *, run: int = 7, spill: int = 3, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    p = build_params(cfg, GEOM, CAL)
    fk = compute_features(arrays, count, mode, p, kernels)
    fr = compute_features(arrays, count, mode, p, reference)
    assert_same_features(fk, fr)
    ck, bk = decide(fk, p, run=run, spill=spill, first=first, backend=kernels)
    cr, br = decide(fr, p, run=run, spill=spill, first=first, backend=reference)
    np.testing.assert_array_equal(ck, cr)
    np.testing.assert_array_equal(bk, br)
    return ck, bk


_sample = st.one_of(st.integers(395, 405), st.integers(0, 4095), st.just(4095), st.just(0))
_windows = st.tuples(st.integers(0, 40), st.integers(1, 40))
_pedestals = st.one_of(st.just(400.0), st.floats(0.0, 4095.0))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wave=hnp.arrays(np.int16, st.tuples(st.integers(0, 5),
                                           st.one_of(st.just(SAMPLES), st.integers(1, 40)),
                                           st.integers(0, 40)), elements=_sample),
       thr=st.floats(1.0, 500.0), win=_windows, ped=_pedestals, masked=st.integers(0, 63),
       pulses=st.booleans())
def test_wave_board_matches_reference(wave: np.ndarray, thr: float, win: tuple[int, int],
                                      ped: float, masked: int, pulses: bool) -> None:
    n, ns, nch = wave.shape  # (count, samples, nch), as on the wire
    w0, w1 = window_in(win, ns)
    peds = channel_pedestals(ped, nch)
    live = np.array([(masked >> c) & 1 == 0 for c in range(nch)], np.uint8)
    outs = []
    for be in (kernels, reference):
        o = (np.empty((n, nch), np.float32), np.empty((n, nch), np.float32),
             np.empty((n, nch), np.uint8), np.empty((n, nch), np.float32),
             np.empty(n, np.uint8))
        be.wave_board(wave, live, peds, w0, w1, thr, 4095, 8, 12.5, True, pulses, *o)
        outs.append(o)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    sat = outs[0][4]
    assert list(sat) == [int(((wave[e, w0:w1] >= 4095).any(axis=0) & (live != 0)).any())
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
        be.wave_board(wave, np.ones(2, np.uint8), np.full(2, 399.0), 0, SAMPLES,
                      5.000000000000001, 4095, 8, 12.5, True, True, *o)
        outs.append(o)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(outs[0][2][0]) == [1, 1]


def _random_hits(rng: np.random.Generator, n: int, nch: int, fill: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(nhit, hit_ch): each channel of each event read out with probability `fill`."""
    nhit, h = hits.sparsify(rng.random((n, nch)) < fill, {})
    return nhit, h["hit_ch"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 6), nch=st.integers(1, 40),
       fill=st.sampled_from([0.0, 0.3, 1.0]), samples=st.one_of(st.just(SAMPLES),
                                                               st.integers(1, 40)),
       data=st.data(), thr=st.floats(1.0, 500.0), win=_windows, ped=_pedestals,
       masked=st.integers(0, 63), pulses=st.booleans())
def test_wave_hits_match_reference(seed: int, n: int, nch: int, fill: float, samples: int,
                                   data: st.DataObject, thr: float, win: tuple[int, int],
                                   ped: float, masked: int, pulses: bool) -> None:
    w0, w1 = window_in(win, samples)
    peds = channel_pedestals(ped, nch)
    nhit, ch = _random_hits(np.random.default_rng(seed), n, nch, fill)
    wave = data.draw(hnp.arrays(np.int16, (len(ch), samples), elements=_sample))
    live = np.array([(masked >> c) & 1 == 0 for c in range(nch)], np.uint8)
    outs = []
    for be in (kernels, reference):
        o = (np.empty(len(ch), np.float32), np.zeros(len(ch), np.uint8), np.empty(n, np.uint8))
        be.wave_hits(nhit, ch, wave, live, peds, w0, w1, thr, 4095, pulses, *o)
        outs.append(o)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wave=hnp.arrays(np.int16, st.tuples(st.integers(0, 5),
                                           st.one_of(st.just(SAMPLES), st.integers(1, 40)),
                                           st.integers(1, 40)), elements=_sample),
       thr=st.floats(1.0, 500.0), win=_windows, ped=_pedestals, masked=st.integers(0, 63))
def test_wave_hits_compute_what_wave_board_does(wave: np.ndarray, thr: float,
                                                win: tuple[int, int], ped: float,
                                                masked: int) -> None:
    # every channel read out: the hits are the board's channels, event by event
    n, ns, nch = wave.shape
    w0, w1 = window_in(win, ns)
    peds = channel_pedestals(ped, nch)
    live = np.array([(masked >> c) & 1 == 0 for c in range(nch)], np.uint8)
    amp, npulse = np.empty((n, nch), np.float32), np.empty((n, nch), np.uint8)
    sat, none = np.empty(n, np.uint8), np.zeros((0, 0), np.float32)
    kernels.wave_board(wave, live, peds, w0, w1, thr, 4095, 8, 12.5, False, True, amp, none,
                       npulse, none, sat)
    nhit, h = hits.sparsify(np.ones((n, nch), bool), {"hit_wave": wave})
    h_amp, h_np, h_sat = np.empty(n * nch, np.float32), np.empty(n * nch, np.uint8), \
        np.empty(n, np.uint8)
    kernels.wave_hits(nhit, h["hit_ch"], h["hit_wave"], live, peds, w0, w1, thr, 4095, True,
                      h_amp, h_np, h_sat)
    np.testing.assert_array_equal(h_amp, amp.reshape(-1))
    np.testing.assert_array_equal(h_np, npulse.reshape(-1))
    np.testing.assert_array_equal(h_sat, sat)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 30), zthr=st.floats(0.0, 50.0),
       feature=st.booleans())
def test_hit_sums_and_beam_match_reference_and_the_dense_kernels(seed: int, n: int,
                                                                 zthr: float,
                                                                 feature: bool) -> None:
    rng = np.random.default_rng(seed)
    nch = 7
    dense = rng.normal(0.0, 30.0, (n, nch))
    dense = (np.round(dense).astype(np.int16) if feature else dense.astype(np.float32))
    mask = rng.random((n, nch)) < 0.6
    npl = rng.integers(0, 5, (n, nch)).astype(np.uint8)
    nhit, h = hits.sparsify(mask, {"amp": dense, "np": npl})
    weight = rng.uniform(0.001, 1.0, nch)
    group = np.array([0, 1, -1, 0, 2, 1, 0], np.int64)
    outs = []
    for be in (kernels, reference):
        sums = np.zeros((n, 3))
        be.accumulate_hits(nhit, h["hit_ch"], h["amp"], weight, group, zthr, sums)
        b_amp, b_np = np.full((n, nch), 9.0, np.float32), np.full((n, nch), 9, np.uint8)
        be.beam_dense_hits(nhit, h["hit_ch"], h["amp"], h["np"], zthr, b_amp, b_np)
        outs.append((sums, b_amp, b_np))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    # the same as the dense kernels on the board with suppressed channels reading zero
    sums = np.zeros((n, 3))
    zeroed = np.where(mask, dense, 0).astype(np.float32)
    kernels.accumulate(zeroed, weight, group, zthr, sums)
    np.testing.assert_array_equal(outs[0][0], sums)
    b_amp, b_np = np.empty((n, nch), np.float32), np.empty((n, nch), np.uint8)
    kernels.beam_dense(zeroed, np.where(mask, npl, 0).astype(np.uint8), zthr, b_amp, b_np)
    np.testing.assert_array_equal(outs[0][1], b_amp)
    np.testing.assert_array_equal(outs[0][2], b_np)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([0, 1, 2, 17, 200]),
       layout=st.sampled_from(LAYOUTS), sat_frac=st.sampled_from([0.0, 0.05, 1.0]),
       pulse=st.floats(5.0, 200.0), zero=st.floats(0.0, 50.0),
       prescale=st.integers(1, 5), ecal_max=st.floats(1.0, 200.0), ps_min=st.floats(0.0, 3.0),
       masked=st.lists(st.sampled_from(["BEAM/S2", "BEAM/V1", "ECAL/PS_2_2", "HCAL/HCAL1_1_1",
                                        "ECAL/MAIN_2_2", "SRD/SRD0"]), unique=True),
       timed=st.sampled_from([(), ("SRD",), ("SRD", "ECAL", "BEAM")]))
def test_full_slice_matches_reference(seed: int, n: int, layout: str, sat_frac: float,
                                      pulse: float, zero: float, prescale: int,
                                      ecal_max: float, ps_min: float, masked: list[str],
                                      timed: tuple[str, ...]) -> None:
    cfg = TriggerConfig(pulse_threshold_adc=pulse, zero_threshold_adc=zero,
                        prescale_beam=prescale, prescale_random=prescale + 1,
                        prescale_calibration=prescale, ecal_max_gev=ecal_max,
                        ps_min_gev=ps_min, masked_channels=tuple(masked), timed_boards=timed)
    arrays = random_slice(np.random.default_rng(seed), n, layout, sat_frac)
    mode = "feature" if layout == "feature" else "waveform"
    cond, bits = _compare(arrays, n, mode, cfg, first=seed % 10_000)
    assert cond.shape == bits.shape == (n,)
    assert not np.any(bits & ~cond)  # a bit fires only where its condition holds
    assert np.all(cond & 4)  # every event is a random-trigger candidate


@pytest.mark.parametrize("layout", LAYOUTS)
def test_simulator_data_matches_reference(layout: str) -> None:
    mode = "feature" if layout == "feature" else "waveform"
    events = 0
    for s in sim_slices(mode, generated_s=0.002, signal_rate=0.01):
        cfg = TriggerConfig(prescale_beam=10, prescale_calibration=3)
        arrays = built_arrays(s)
        if layout == "wave_zs":
            arrays = zero_suppress(arrays, s.count)
        assert ("ECAL.wave" in arrays) == (layout == "wave")
        _compare(arrays, s.count, mode, cfg, spill=s.spill, first=s.first)
        events += s.count
    assert events > 1000


def _events(arrays: dict[str, np.ndarray], a: int, b: int) -> dict[str, np.ndarray]:
    """Events a..b of a built slice (hits by daq.hits.select)."""
    keep = np.arange(a, b)
    out = {k: v[a:b] for k, v in arrays.items() if not hits.is_hit_array(k)}
    for board in GEOM.board_names:
        if f"{board}.nhit" in arrays:
            per_hit = {k: v for k, v in arrays.items() if k.startswith(f"{board}.hit_")}
            out[f"{board}.nhit"], sel = hits.select(arrays[f"{board}.nhit"], per_hit, keep)
            out.update(sel)
    return out


@given(ts=hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(-10**6, 10**6)))
@settings(deadline=None)  # the first example compiles the kernel
def test_neighbour_gaps_match_reference_and_their_definition(ts: np.ndarray) -> None:
    """dt_prev / dt_next: ns to the neighbouring events of the slice, saturated at GAP_MAX,
    0 at the slice's ends and where time runs backwards; the two backends agree."""
    ts = np.sort(ts) if len(ts) % 2 else ts  # ordered slices, and disordered ones
    k, r = neighbour_gaps(ts, kernels), neighbour_gaps(ts, reference)
    for name in ("dt_prev", "dt_next"):
        np.testing.assert_array_equal(k[name], r[name], err_msg=name)
        assert k[name].dtype == np.uint16
    for i in range(len(ts)):
        prev = 0 if i == 0 else min(max(int(ts[i] - ts[i - 1]), 0), kernels.GAP_MAX)
        nxt = 0 if i == len(ts) - 1 else min(max(int(ts[i + 1] - ts[i]), 0), kernels.GAP_MAX)
        assert (int(k["dt_prev"][i]), int(k["dt_next"][i])) == (prev, nxt)


def test_prescale_is_per_event_not_per_slice() -> None:
    cfg = TriggerConfig(prescale_beam=7, prescale_random=11, prescale_calibration=5)
    rng = np.random.default_rng(5)
    n = 3000
    arrays = random_slice(rng, n, "feature")
    p = build_params(cfg, GEOM, CAL)
    whole = decide(compute_features(arrays, n, "feature", p), p, run=1, spill=2, first=1000)[1]
    parts = []
    for a, b in ((0, 1), (1, 999), (999, 2500), (2500, n)):
        sub = _events(arrays, a, b)
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
    arrays = random_slice(np.random.default_rng(1), 500, "feature")
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


def _wire_slice(arrays: dict[str, np.ndarray], count: int, mode: str,
                trigger: TriggerConfig) -> Message:
    """A built slice as a worker receives it: encoded and decoded (read-only arrays)."""
    cfg = trigger.model_dump(mode="json")
    msg = Message(Kind.SLICE, run=1, spill=0, board="ALL", first=0, count=count,
                  arrays=arrays, meta={"mode": mode, "calib": CAL.hash, "cfg": content_hash(cfg),
                                       "trigger_config": cfg, "slice_index": 0})
    return decode([bytes(memoryview(f)) for f in encode(msg)])


@pytest.mark.parametrize("timed", [(), ("SRD",)], ids=["untimed", "srd-timed"])
def test_warm_up_compiles_every_specialisation_a_wire_slice_needs(timed: tuple[str, ...]
                                                                  ) -> None:
    warm_up(GEOM, CAL)
    dispatchers = [getattr(kernels, name) for name in (
        "wave_peak_board", "wave_peak_hits", "feature_hits", "accumulate", "accumulate_hits",
        "beam_dense", "beam_dense_hits", "multiplicity", "decide", "feature_columns",
        "hit_starts", "gather_hits", "neighbour_gaps")]
    before = [len(cast(Any, d).signatures) for d in dispatchers]
    proc = SliceProcessor(GEOM, CAL)
    rng = np.random.default_rng(2)
    for layout in LAYOUTS:
        mode = "feature" if layout == "feature" else "waveform"
        arrays = random_slice(rng, 50, layout)
        wire = _wire_slice(arrays, 50, mode, TriggerConfig(timed_boards=timed))
        assert not wire.arrays["ts"].flags.writeable  # as a worker receives it
        # a short fragment padded by the builder: a writable nhit beside read-only hits
        padded = dict(wire.arrays)
        for name in [k for k in padded if k.endswith(".nhit")]:
            padded[name] = padded[name].copy()
        for a in (arrays, wire.arrays, padded):
            res = proc.process(Message(Kind.SLICE, run=1, spill=0, board="ALL", first=0,
                                       count=50, arrays=a, meta=wire.meta))
            assert res.features.count == 50
            # what an accepting configuration selects (the random default keeps few)
            kept = select_events(a, np.flatnonzero(np.arange(50) % 3 == 0), kernels)
            assert len(kept["ts"]) == 17
    assert [len(cast(Any, d).signatures) for d in dispatchers] == before
