"""Zero-suppressed boards in the trigger: each board's layout, malformed hits, accepted hits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_trigger_kernels import assert_same_features
from trigger_data import ZS_ADC, built_arrays, detector, random_slice, sim_slices, zero_suppress

from daq import hits
from daq.config import content_hash
from daq.wire import Kind, Message, decode, encode
from trigger import kernels, reference
from trigger.config import TriggerConfig
from trigger.core import Features, build_params, compute_features, decide, select_events
from trigger.errors import SliceError
from trigger.processor import SliceProcessor

GEOM, CAL = detector()
BOARDS = GEOM.board_names


def _features_and_bits(arrays: dict[str, np.ndarray], count: int, mode: str,
                       cfg: TriggerConfig) -> tuple[Features, np.ndarray, np.ndarray]:
    p = build_params(cfg, GEOM, CAL)
    f = compute_features(arrays, count, mode, p)
    cond, bits = decide(f, p, run=3, spill=1, first=100)
    return f, cond, bits


def _board(arrays: dict[str, np.ndarray], board: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k.startswith(f"{board}.")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([0, 1, 9, 150]),
       suppressed=st.integers(0, 31), sat_frac=st.sampled_from([0.0, 0.05]),
       extra=st.floats(0.0, 40.0), pulse=st.floats(1.0, 200.0),
       s_min=st.floats(0.001, 2.0), v1_max=st.floats(0.001, 2.0),
       masked=st.lists(st.sampled_from(["BEAM/S1", "BEAM/V1", "ECAL/PS_2_2", "SRD/SRD1"]),
                       unique=True),
       timed=st.sampled_from([(), ("SRD",), ("SRD", "VETO")]))
def test_zero_suppressed_waveforms_give_the_full_waveform_features(
        seed: int, n: int, suppressed: int, sat_frac: float, extra: float, pulse: float,
        s_min: float, v1_max: float, masked: list[str], timed: tuple[str, ...]) -> None:
    # any board may be suppressed, each on its own; identical to the bit whenever
    # zero_threshold_adc >= zs, whatever the pulse threshold and the beam cuts
    full = random_slice(np.random.default_rng(seed), n, "wave", sat_frac)
    zs = zero_suppress(full, n)
    mixed = {k: v for k, v in full.items() if "." not in k}
    for i, b in enumerate(BOARDS):
        mixed.update(_board(zs if (suppressed >> i) & 1 else full, b))
    cfg = TriggerConfig(zero_threshold_adc=ZS_ADC + extra, pulse_threshold_adc=pulse,
                        s_min_mip=s_min, v1_max_mip=v1_max, prescale_beam=2,
                        masked_channels=tuple(masked), timed_boards=timed)
    ff, cf, bf = _features_and_bits(full, n, "waveform", cfg)
    fz, cz, bz = _features_and_bits(mixed, n, "waveform", cfg)
    assert_same_features(ff, fz)
    np.testing.assert_array_equal(cf, cz)
    np.testing.assert_array_equal(bf, bz)


def test_simulated_zero_suppressed_waveforms_give_the_full_waveform_decisions() -> None:
    cfg = TriggerConfig(prescale_beam=5, prescale_calibration=2)
    events = hit_events = 0
    for s in sim_slices("waveform", seed=8, generated_s=0.002, signal_rate=0.01):
        full = built_arrays(s)
        zs = zero_suppress(full, s.count)
        ff, cf, bf = _features_and_bits(full, s.count, "waveform", cfg)
        fz, cz, bz = _features_and_bits(zs, s.count, "waveform", cfg)
        assert_same_features(ff, fz)
        np.testing.assert_array_equal(cf, cz)
        np.testing.assert_array_equal(bf, bz)
        events += s.count
        hit_events += int(np.count_nonzero(zs["ECAL.nhit"]))
        assert zs["ECAL.nhit"].mean() < 0.5 * len(GEOM.board("ECAL").channels)
    assert events > 1000 and hit_events > 0.9 * events


def _feature_board(nch: int, rows: list[dict[int, tuple[int, int]]]) -> dict[str, np.ndarray]:
    """Feature hits of one board: per event {channel: (amplitude, pulses)}."""
    nhit = np.array([len(r) for r in rows], np.uint8)
    items = [(c, a, p) for r in rows for c, (a, p) in sorted(r.items())]
    assert all(c < nch for c, _, _ in items)
    return {"nhit": nhit, "hit_ch": np.array([c for c, _, _ in items], np.uint8),
            "hit_amp": np.array([a for _, a, _ in items], np.int16),
            "hit_t": np.zeros(len(items), np.int16),
            "hit_np": np.array([p for _, _, p in items], np.uint8)}


def test_feature_hits_give_sums_saturation_and_beam_multiplicity() -> None:
    ecal = GEOM.board("ECAL")
    ps = [i for i, c in enumerate(ecal.channels) if c.group == "PS"]
    main = [i for i, c in enumerate(ecal.channels) if c.group == "MAIN"]
    g_ps = float(CAL.gain["ECAL"][ps[0]])
    g_main = float(CAL.gain["ECAL"][main[0]])
    limit = GEOM.detector.adc_max - float(CAL.pedestal["ECAL"][main[0]])
    beam = _feature_board(4, [{0: (500, 1), 1: (1000, 1), 2: (500, 2), 3: (7, 1)},
                              {0: (500, 1), 2: (500, 1)},
                              {}])
    ecal_hits = _feature_board(len(ecal.channels), [
        {ps[0]: (300, 1), main[0]: (600, 1), main[1]: (9, 1)},
        {main[0]: (int(limit), 1)},
        {ps[1]: (150, 1)}])
    arrays = {f"BEAM.{k}": v for k, v in beam.items()}
    arrays.update({f"ECAL.{k}": v for k, v in ecal_hits.items()})
    cfg = TriggerConfig(zero_threshold_adc=10.0, prescale_beam=1)
    f, cond, _ = _features_and_bits(arrays, 3, "feature", cfg)
    fr = compute_features(arrays, 3, "feature", build_params(cfg, GEOM, CAL), reference)
    assert_same_features(f, fr)
    # amplitude / gain, the 9-count hit below the zero threshold left out
    np.testing.assert_array_equal(f.e_ps, [300 / g_ps, 0.0, 150 / g_ps])
    np.testing.assert_array_equal(f.e_ecal, [300 / g_ps + 600 / g_main,
                                             limit / g_main, 150 / g_ps])
    ecal_bit = 1 << BOARDS.index("ECAL")
    assert list(f.sat) == [0, ecal_bit, 0]
    # S1..S3 = 1, 2 and 1 MIP with 1, 1 and 2 pulses: particles 1, 2, 2 -> median 2;
    # event 1 misses S2 (read nothing): 1, 0, 1 -> 1; event 2 has no beam counter at all
    assert list(f.mult) == [2, 1, 0]
    # V1 read 7 counts, below the zero threshold: no veto; event 1 fails the S2 cut
    assert list(cond & 2) == [2, 0, 0]


def test_a_board_that_sent_nothing_reads_zero() -> None:
    arrays = random_slice(np.random.default_rng(4), 40, "feature")
    cfg = TriggerConfig(prescale_beam=1)
    for b in BOARDS:
        empty = {k: v for k, v in arrays.items() if not k.startswith(f"{b}.")}
        none = dict(empty, **{f"{b}.nhit": np.zeros(40, np.uint8)},
                    **{f"{b}.{k}": np.zeros(0, dt) for k, dt in hits.FEATURE_HITS.items()})
        fa, _, ba = _features_and_bits(empty, 40, "feature", cfg)
        fb, _, bb = _features_and_bits(none, 40, "feature", cfg)
        assert_same_features(fa, fb)
        np.testing.assert_array_equal(ba, bb)


def _malformed() -> list[tuple[str, str, dict[str, np.ndarray], str]]:
    n = 30
    feat = random_slice(np.random.default_rng(5), n, "feature")
    wave = random_slice(np.random.default_rng(5), n, "wave_zs")
    total = len(feat["ECAL.hit_ch"])
    more = feat["ECAL.nhit"].copy()
    more[np.argmin(more)] += 1
    wide = feat["HCAL.hit_ch"].copy()
    wide[-1] = len(GEOM.board("HCAL").channels)
    off = hits.offsets(feat["ECAL.nhit"])
    e = int(np.flatnonzero(feat["ECAL.nhit"] >= 2)[0])
    swapped = feat["ECAL.hit_ch"].copy()
    swapped[off[e]:off[e] + 2] = swapped[off[e]:off[e] + 2][::-1]
    offw = hits.offsets(wave["ECAL.nhit"])
    ew = int(np.flatnonzero(wave["ECAL.nhit"] >= 2)[0])
    repeated = wave["ECAL.hit_ch"].copy()
    repeated[offw[ew] + 1] = repeated[offw[ew]]
    return [
        ("nhit sum mismatch", "feature", dict(feat, **{"ECAL.nhit": more}), "ECAL.hit_ch"),
        ("channel out of range", "feature", dict(feat, **{"HCAL.hit_ch": wide}), "HCAL.hit_ch"),
        ("wrong dtype", "feature",
         dict(feat, **{"ECAL.hit_amp": feat["ECAL.hit_amp"].astype(np.float32)}),
         "ECAL.hit_amp"),
        ("nhit dtype", "feature", dict(feat, **{"SRD.nhit": feat["SRD.nhit"].astype(np.int64)}),
         "SRD.nhit"),
        ("short hit array", "feature", dict(feat, **{"ECAL.hit_np": np.zeros(total - 1, np.uint8)}),
         "ECAL.hit_np"),
        ("samples", "waveform",
         dict(wave, **{"VETO.hit_wave": np.ascontiguousarray(wave["VETO.hit_wave"][:, :5])}),
         "VETO.hit_wave"),
        ("more hits than channels", "waveform",
         dict(wave, **{"BEAM.nhit": np.full(n, len(GEOM.board("BEAM").channels) + 1,
                                             np.uint8)}), "BEAM.nhit"),
        ("dense feature layout", "feature",
         {k: v for k, v in feat.items() if not k.startswith("ECAL.")}
         | {"ECAL.amp": np.zeros((n, 60), np.float32), "ECAL.npulse": np.zeros((n, 60), np.uint8)},
         "ECAL.nhit"),
        ("hits without nhit", "waveform",
         {k: v for k, v in wave.items() if k != "SRD.nhit"}, "SRD.nhit"),
        ("channels not ascending", "feature", dict(feat, **{"ECAL.hit_ch": swapped}),
         "ECAL.hit_ch"),
        ("channel repeated", "waveform", dict(wave, **{"ECAL.hit_ch": repeated}),
         "ECAL.hit_ch"),
        ("unknown board", "feature", dict(feat, **{"TPC.nhit": np.zeros(n, np.uint8)}), "TPC"),
    ]


@pytest.mark.parametrize(("case", "mode", "arrays", "name"), _malformed(),
                         ids=[c[0] for c in _malformed()])
def test_malformed_hits_are_a_slice_error_naming_the_array(case: str, mode: str,
                                                           arrays: dict[str, np.ndarray],
                                                           name: str) -> None:
    p = build_params(TriggerConfig(), GEOM, CAL)
    for backend in (kernels, reference):
        with pytest.raises(SliceError) as ei:
            compute_features(arrays, 30, mode, p, backend)
        assert ei.value.reason == "shape" and name in ei.value.detail, case
        if case.startswith(("channels not", "channel repeated")):
            assert "is not above the previous channel" in ei.value.detail


def _slice_message(arrays: dict[str, np.ndarray], count: int, mode: str,
                   cfg: TriggerConfig) -> Message:
    data = cfg.model_dump(mode="json")
    msg = Message(Kind.SLICE, run=2, spill=5, board="ALL", first=4096, count=count,
                  arrays=arrays, meta={"mode": mode, "calib": CAL.hash, "slice_index": 1,
                                       "cfg": content_hash(data), "trigger_config": data})
    return decode([bytes(memoryview(f)) for f in encode(msg)])


@pytest.mark.parametrize("layout", ["feature", "wave_zs"])
def test_accepted_events_keep_exactly_their_hits_in_order(layout: str) -> None:
    n = 400
    mode = "feature" if layout == "feature" else "waveform"
    arrays = random_slice(np.random.default_rng(6), n, layout)
    del arrays["SRD.nhit"], arrays["SRD.hit_ch"]  # a board that read nothing
    for k in [k for k in arrays if k.startswith("SRD.")]:
        del arrays[k]
    msg = _slice_message(arrays, n, mode, TriggerConfig(prescale_random=3))
    res = SliceProcessor(GEOM, CAL).process(msg)
    acc = res.accepted
    idx = np.flatnonzero(res.features.arrays["bits"])
    assert 0 < len(idx) < n and acc.count == len(idx)
    np.testing.assert_array_equal(acc.arrays["event"], idx + msg.first)
    np.testing.assert_array_equal(acc.arrays["ts"], arrays["ts"][idx])
    assert not any(k.startswith("SRD.") for k in acc.arrays)
    for b in BOARDS:
        if f"{b}.nhit" not in arrays:
            continue
        off = hits.offsets(arrays[f"{b}.nhit"])
        np.testing.assert_array_equal(acc.arrays[f"{b}.nhit"], arrays[f"{b}.nhit"][idx])
        names = [k for k in arrays if k.startswith(f"{b}.hit_")]
        assert names and sorted(k for k in acc.arrays if k.startswith(f"{b}.hit_")) == \
            sorted(names)
        for k in names:
            want = np.concatenate([arrays[k][off[e]:off[e + 1]] for e in idx])
            np.testing.assert_array_equal(acc.arrays[k], want, err_msg=k)
    for name in ("e_ecal", "bits", "mult"):
        np.testing.assert_array_equal(acc.arrays[name], res.features.arrays[name][idx])
    # the accepted message is a valid wire message, and its hits are consistent
    back = decode([bytes(memoryview(f)) for f in encode(acc)])
    spec = hits.FEATURE_HITS if layout == "feature" else hits.WAVE_HITS
    for b in BOARDS:
        if f"{b}.nhit" in back.arrays:
            hits.check(back.arrays, acc.count, len(GEOM.board(b).channels), spec,
                       prefix=f"{b}.", samples=GEOM.detector.samples)


def test_nothing_accepted_gives_empty_hit_arrays() -> None:
    arrays = random_slice(np.random.default_rng(7), 50, "feature")
    cfg = TriggerConfig(enabled=("physics",), ecal_max_gev=1.0)
    res = SliceProcessor(GEOM, CAL).process(_slice_message(arrays, 50, "feature", cfg))
    acc = res.accepted
    assert acc.count == 0
    assert acc.arrays["ECAL.nhit"].shape == (0,) and acc.arrays["ECAL.hit_amp"].shape == (0,)
    decode([bytes(memoryview(f)) for f in encode(acc)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), frac=st.floats(0.0, 1.0),
       per_hit=st.sampled_from([1, 3, 32]), dtype=st.sampled_from([np.uint8, np.int16]))
def test_hit_selection_kernels_match_the_reference_and_hitsselect_events(
        seed: int, n: int, frac: float, per_hit: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    nhit = rng.integers(0, 6, n).astype(np.uint8)
    total = int(nhit.sum())
    src = rng.integers(-200, 200, (total, per_hit)).astype(dtype)
    keep = np.flatnonzero(rng.random(n) < frac)
    got = {}
    for backend in (kernels, reference):
        starts = np.full(len(keep), -1, np.int64)
        kept = backend.hit_starts(nhit, keep, starts)
        dst = np.empty((kept, per_hit), dtype)
        backend.gather_hits(src.reshape(-1), per_hit, nhit, keep, starts, dst.reshape(-1))
        got[backend.__name__] = (kept, starts, dst)
    (k1, s1, d1), (k2, s2, d2) = got.values()
    assert k1 == k2 and np.array_equal(s1, s2) and np.array_equal(d1, d2)
    n_sel, want = hits.select(nhit, {"hit_x": src}, keep)
    assert k1 == int(n_sel.sum()) and np.array_equal(d1, want["hit_x"])


def test_accepting_from_a_board_with_fewer_hits_than_it_counts_is_a_slice_error() -> None:
    arrays = random_slice(np.random.default_rng(8), 40, "feature")
    arrays["ECAL.hit_t"] = arrays["ECAL.hit_t"][:-1]  # one hit short of what nhit counts
    with pytest.raises(SliceError, match=r"ECAL\.hit_t has"):
        select_events(arrays, np.arange(40), kernels)
