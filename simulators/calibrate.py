"""Deposits (GeV) to ADC counts in one compiled pass, taking the truth's energy sums and
noting where the deposits are on the way.

`to_adc` converts a block of particles in place and returns the sums; `to_adc_reference`
is the NumPy version the tests hold it to, bit for bit. What it notes (`Particles.touched`,
`Particles.reach`) lets the zero-suppressed readout skip, in an event alone in its gate,
the channels without deposit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from simulators.jit import inline, kernel
from simulators.physics import Particles

#: truth sums: name -> (board, groups of channels, one sum each; None: all channels)
SumSpec = Mapping[str, tuple[str, Sequence[np.ndarray | None]]]


def to_adc(p: Particles, gain: Mapping[str, np.ndarray], sums: SumSpec
           ) -> dict[str, np.ndarray]:
    """Multiply every deposit of `p` by its channel's gain, in place; set
    `p.touched` (which particles deposit in some channel of a board) and `p.reach` (in
    which channels some particle deposits).

    Returns the deposits (GeV, before the conversion) of each particle summed over each
    group of `sums`: float32 (n,) for one group, (n, groups) for several, added in float32
    as `to_adc_reference` adds them: all the channels of a board pairwise (as `ndarray.sum`
    adds a row), a group of them left to right. (That is also the order in which
    `dep[:, group].sum(axis=1)` added a block's groups before: NumPy sums the copy that
    fancy indexing makes column by column, except for tiny blocks.)
    """
    if any(c is not None and len(c) == 0 for _, groups in sums.values() for c in groups):
        raise ValueError("a truth sum over no channel")
    out: dict[str, np.ndarray] = {}
    for board, g in gain.items():
        dep = p.dep[board]
        wanted = [(name, groups) for name, (b, groups) in sums.items() if b == board]
        cols = [c for _, groups in wanted for c in groups]
        whole = np.array([c is None for c in cols], np.uint8)
        idx = [np.zeros(0, np.int64) if c is None else np.asarray(c, np.int64) for c in cols]
        starts = np.zeros(len(cols) + 1, np.int64)
        np.cumsum([len(c) for c in idx], out=starts[1:])
        flat = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        res = np.empty((len(dep), len(cols)), np.float32)
        g32 = g.astype(np.float32, copy=False)
        p.touched[board] = np.empty(len(dep), np.uint8)
        p.reach[board] = np.empty(dep.shape[1], np.uint8)
        _convert(dep, g32, whole, flat, starts, res, p.touched[board], p.reach[board])
        j = 0
        for name, groups in wanted:
            out[name] = res[:, j] if len(groups) == 1 else res[:, j:j + len(groups)]
            j += len(groups)
    return out


def to_adc_reference(p: Particles, gain: Mapping[str, np.ndarray], sums: SumSpec
                     ) -> dict[str, np.ndarray]:
    """NumPy version of `to_adc`."""
    out: dict[str, np.ndarray] = {}
    for name, (board, groups) in sums.items():
        d = p.dep[board]
        cols = [d.sum(axis=1) if c is None else _left_to_right(d, c) for c in groups]
        out[name] = cols[0] if len(cols) == 1 else np.stack(cols, axis=1)
    for board, g in gain.items():
        p.touched[board] = np.asarray((p.dep[board] > 0).any(axis=1), np.uint8)
        p.reach[board] = np.asarray((p.dep[board] > 0).any(axis=0), np.uint8)
        p.dep[board] *= g
    return out


def _left_to_right(d: np.ndarray, cols: np.ndarray) -> np.ndarray:
    s = d[:, cols[0]].copy()
    for c in cols[1:]:
        s += d[:, c]
    return s


@kernel
def _convert(dep: np.ndarray, gain: np.ndarray, whole: np.ndarray, flat: np.ndarray,
             starts: np.ndarray, sums: np.ndarray, touched: np.ndarray,
             reach: np.ndarray) -> None:
    n, nch = dep.shape
    reach[:] = 0
    for g in range(whole.shape[0]):
        if whole[g]:
            for r in range(n):
                sums[r, g] = _pairwise(dep, r, 0, nch)
            continue
        # left to right, four particles at a time: four additions that do not wait for
        # one another
        a, b = starts[g], starts[g + 1]
        for r in range(0, n - n % 4, 4):
            c = flat[a]
            s0, s1, s2, s3 = dep[r, c], dep[r + 1, c], dep[r + 2, c], dep[r + 3, c]
            for q in range(a + 1, b):
                c = flat[q]
                s0 += dep[r, c]
                s1 += dep[r + 1, c]
                s2 += dep[r + 2, c]
                s3 += dep[r + 3, c]
            sums[r, g], sums[r + 1, g], sums[r + 2, g], sums[r + 3, g] = s0, s1, s2, s3
        for r in range(n - n % 4, n):
            s = dep[r, flat[a]]
            for q in range(a + 1, b):
                s += dep[r, flat[q]]
            sums[r, g] = s
    for r in range(n):
        any_dep = np.uint8(0)
        for c in range(nch):
            d = dep[r, c]
            any_dep |= d > 0.0
            reach[c] |= d > 0.0
            dep[r, c] = d * gain[c]  # float32 x float32, as NumPy's `dep *= gain`
        touched[r] = any_dep


@inline
def _pairwise(a: np.ndarray, r: int, lo: int, n: int) -> np.float32:
    """NumPy's pairwise float32 sum of a[r, lo:lo + n] (`FLOAT_pairwise_sum`, in
    numpy/_core/src/umath/loops_utils.h.src), for n up to 512: NumPy halves a range of more
    than 128 values, here twice at most, written out (a cached numba kernel may not call
    itself)."""
    if n <= 128:
        return _pairwise_block(a, r, lo, n)
    half = n // 2 - (n // 2) % 8
    return _pairwise_half(a, r, lo, half) + _pairwise_half(a, r, lo + half, n - half)


@inline
def _pairwise_half(a: np.ndarray, r: int, lo: int, n: int) -> np.float32:
    if n <= 128:
        return _pairwise_block(a, r, lo, n)
    half = n // 2 - (n // 2) % 8
    return _pairwise_block(a, r, lo, half) + _pairwise_block(a, r, lo + half, n - half)


@inline
def _pairwise_block(a: np.ndarray, r: int, lo: int, n: int) -> np.float32:
    if n < 8:
        s = np.float32(0.0)
        for i in range(lo, lo + n):
            s += a[r, i]
        return s
    r0, r1, r2, r3 = a[r, lo], a[r, lo + 1], a[r, lo + 2], a[r, lo + 3]
    r4, r5, r6, r7 = a[r, lo + 4], a[r, lo + 5], a[r, lo + 6], a[r, lo + 7]
    i = 8
    while i < n - n % 8:
        r0 += a[r, lo + i]
        r1 += a[r, lo + i + 1]
        r2 += a[r, lo + i + 2]
        r3 += a[r, lo + i + 3]
        r4 += a[r, lo + i + 4]
        r5 += a[r, lo + i + 5]
        r6 += a[r, lo + i + 6]
        r7 += a[r, lo + i + 7]
        i += 8
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        s += a[r, lo + i]
        i += 1
    return s
