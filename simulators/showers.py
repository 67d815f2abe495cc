"""Compiled steps of the particle generation: the lateral shower shape and how deposits are
shared among channels, each bit for bit the NumPy expression it replaces (`*_reference`).

They take the random numbers already drawn, so the random streams are those of
`physics.generate_block`; float32 throughout, in the NumPy order of the operations (a
row's sum as `ndarray.sum` adds it: pairwise from 8 values on, in order below).
"""

from __future__ import annotations

import numpy as np

from simulators.jit import kernel

#: weights of the 3 x 3 cells of a cluster before the fluctuation: edges 4x the corners
LATERAL_BASE = np.array([0.25, 1, 0.25, 1, 0, 1, 0.25, 1, 0.25], np.float32) * np.float32(0.8)


def lateral_shares(u: np.ndarray, z: np.ndarray, centre: float) -> np.ndarray:
    """(n, 9) shares of a 3 x 3 cluster from u ~ U(0, 1) (n, 9) and z ~ N(0, 1) (n,), float32:
    centre cell `centre` + 0.03 z clipped to [0.5, 0.95], the rest shared as
    LATERAL_BASE x U(0.75, 1.75). `u` becomes the result; `z` the centre share."""
    _lateral(u, z, LATERAL_BASE, np.float32(centre))
    return u


def lateral_shares_reference(u: np.ndarray, z: np.ndarray, centre: float) -> np.ndarray:
    """NumPy version of `lateral_shares`."""
    u += np.float32(0.75)  # U(0.75, 1.75) x 0.8 = U(0.6, 1.4)
    u *= LATERAL_BASE
    z *= np.float32(0.03)
    z += np.float32(centre)
    np.clip(z, 0.5, 0.95, out=z)
    u *= ((1 - z) / u.sum(axis=1))[:, None]
    u[:, 4] = z
    return u


@kernel
def _lateral(w: np.ndarray, f0: np.ndarray, base: np.ndarray, centre: np.float32) -> None:
    lo, hi = np.float32(0.5), np.float32(0.95)
    for r in range(w.shape[0]):
        for q in range(9):
            w[r, q] = (w[r, q] + np.float32(0.75)) * base[q]
        f = min(max(f0[r] * np.float32(0.03) + centre, lo), hi)
        s = (((w[r, 0] + w[r, 1]) + (w[r, 2] + w[r, 3]))  # NumPy's pairwise sum of 9
             + ((w[r, 4] + w[r, 5]) + (w[r, 6] + w[r, 7]))) + w[r, 8]
        g = (np.float32(1.0) - f) / s
        for q in range(9):
            w[r, q] = w[r, q] * g
        w[r, 4] = f
        f0[r] = f


def spread_shower(dep: np.ndarray, ps_cells: np.ndarray, main_cells: np.ndarray,
                  energy: np.ndarray, ps_share: np.ndarray, lateral: np.ndarray) -> None:
    """Set dep[:, ps_cells] to the preshower's part of `energy` (energy x ps_share) times the
    lateral shares, and dep[:, main_cells] to the rest times the same shares."""
    _spread(dep, ps_cells.astype(np.int64), main_cells.astype(np.int64), energy, ps_share,
            lateral)


def spread_shower_reference(dep: np.ndarray, ps_cells: np.ndarray, main_cells: np.ndarray,
                            energy: np.ndarray, ps_share: np.ndarray,
                            lateral: np.ndarray) -> None:
    """NumPy version of `spread_shower`."""
    ps = energy * ps_share
    dep[:, ps_cells] = ps[:, None] * lateral
    dep[:, main_cells] = (energy - ps)[:, None] * lateral


@kernel
def _spread(dep: np.ndarray, ps_cells: np.ndarray, main_cells: np.ndarray,
            energy: np.ndarray, ps_share: np.ndarray, lateral: np.ndarray) -> None:
    for r in range(dep.shape[0]):
        ps = energy[r] * ps_share[r]
        main = energy[r] - ps
        for q in range(ps_cells.shape[0]):
            dep[r, ps_cells[q]] = ps * lateral[r, q]
        for q in range(main_cells.shape[0]):
            dep[r, main_cells[q]] = main * lateral[r, q]


def split_srd(u: np.ndarray, total: np.ndarray, out: np.ndarray) -> None:
    """out (n, m) = `total` shared over m < 8 modules with weights 0.5 + u, u ~ U(0, 1)."""
    assert u.shape[1] < 8, "NumPy sums 8 values or more pairwise"
    _split(u, total, out)


def split_srd_reference(u: np.ndarray, total: np.ndarray, out: np.ndarray) -> None:
    """NumPy version of `split_srd` (u is changed)."""
    u += np.float32(0.5)
    u *= (total / u.sum(axis=1))[:, None]
    out[:] = u


@kernel
def _split(u: np.ndarray, total: np.ndarray, out: np.ndarray) -> None:
    m = u.shape[1]
    for r in range(u.shape[0]):
        s = np.float32(0.0)  # fewer than 8 values: NumPy adds them in order
        for q in range(m):
            s += u[r, q] + np.float32(0.5)
        f = total[r] / s
        for q in range(m):
            out[r, q] = (u[r, q] + np.float32(0.5)) * f
