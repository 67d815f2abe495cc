"""daq.hits: the zero-suppressed layout is checked, built, selected and expanded exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daq import hits
from daq.errors import WireError
from daq.wire import Kind, Message, decode, encode


def _dense(seed: int, count: int, nch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    amp = rng.integers(-5, 400, (count, nch)).astype(np.int16)
    return amp, amp >= 6


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), count=st.integers(0, 40), nch=st.integers(1, 60))
def test_sparsify_then_densify_gives_back_the_kept_channels(seed: int, count: int,
                                                            nch: int) -> None:
    amp, mask = _dense(seed, count, nch)
    nhit, h = hits.sparsify(mask, {"hit_amp": amp})
    assert nhit.dtype == np.uint8 and nhit.tolist() == mask.sum(axis=1).tolist()
    assert hits.check({"nhit": nhit, **h}, count, nch, {"hit_ch": np.dtype("u1"),
                                                        "hit_amp": np.dtype("<i2")}) == mask.sum()
    back = hits.densify(nhit, h["hit_ch"], h["hit_amp"], nch)
    assert np.array_equal(back, np.where(mask, amp, 0))
    off = hits.offsets(nhit)
    for e in range(count):  # channels ascending within an event
        ch = h["hit_ch"][off[e]:off[e + 1]]
        assert np.array_equal(ch, np.flatnonzero(mask[e]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), count=st.integers(1, 40), frac=st.floats(0, 1))
def test_select_keeps_exactly_the_hits_of_the_kept_events(seed: int, count: int,
                                                         frac: float) -> None:
    amp, mask = _dense(seed, count, 9)
    nhit, h = hits.sparsify(mask, {"hit_amp": amp})
    keep = np.flatnonzero(np.random.default_rng(seed).random(count) < frac)
    n2, h2 = hits.select(nhit, h, keep)
    want_n, want_h = hits.sparsify(mask[keep], {"hit_amp": amp[keep]})
    assert np.array_equal(n2, want_n)
    assert all(np.array_equal(h2[k], want_h[k]) for k in want_h)


def test_waveform_hits_are_the_rows_of_the_kept_channels() -> None:
    rng = np.random.default_rng(3)
    wave = rng.integers(390, 500, (5, 32, 7)).astype(np.int16)
    mask = rng.random((5, 7)) < 0.4
    nhit, h = hits.sparsify(mask, {"hit_wave": wave})
    assert h["hit_wave"].shape == (int(mask.sum()), 32) and h["hit_wave"].flags.c_contiguous
    e, c = np.nonzero(mask)
    for k in range(len(e)):
        assert np.array_equal(h["hit_wave"][k], wave[e[k], :, c[k]])
    assert hits.check({"nhit": nhit, **h}, 5, 7, hits.WAVE_HITS, samples=32) == len(e)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda a: a.pop("nhit"), "nhit is absent"),
    (lambda a: a.update(nhit=a["nhit"].astype(np.int16)), "nhit is int16"),
    (lambda a: a.update(hit_amp=a["hit_amp"][:-1]), "hit_amp is int16(4,)"),
    (lambda a: a.update(hit_t=a["hit_t"].astype(np.float32)), "hit_t is float32"),
    (lambda a: a.update(hit_ch=np.array([0, 1, 9, 0, 3], np.uint8)), "hit_ch has channel 9"),
    (lambda a: a.update(nhit=np.array([5, 0, 0], np.uint8), hit_ch=np.zeros(5, np.uint8)),
     "an event with 5 hits"),
])
def test_bad_hit_arrays_are_named(change, needle: str) -> None:  # type: ignore[no-untyped-def]
    a = {"nhit": np.array([3, 0, 2], np.uint8), "hit_ch": np.array([0, 1, 2, 0, 3], np.uint8),
         "hit_amp": np.arange(5, dtype=np.int16), "hit_t": np.zeros(5, np.int16),
         "hit_np": np.ones(5, np.uint8)}
    change(a)
    with pytest.raises(WireError, match="ECAL slice") as e:
        hits.check(a, 3, 4, hits.FEATURE_HITS, what="ECAL slice")
    assert needle in str(e.value)


def test_codec_lets_hit_arrays_run_over_hits_but_no_other_array() -> None:
    arrays = {"ts": np.arange(3, dtype=np.int64), "ECAL.nhit": np.array([2, 0, 3], np.uint8),
              "ECAL.hit_amp": np.arange(5, dtype=np.int16)}
    m = Message(kind=Kind.SLICE, count=3, arrays=arrays, meta={"mode": "feature"})
    got = decode(encode(m))
    assert got.arrays["ECAL.hit_amp"].tolist() == [0, 1, 2, 3, 4]
    bad = Message(kind=Kind.SLICE, count=3, arrays={**arrays, "ECAL.amp": np.zeros(5)})
    with pytest.raises(WireError, match=r"'ECAL\.amp' has shape"):
        decode(encode(bad))
