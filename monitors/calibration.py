"""The ECAL energy scale from the calibration trigger's electrons (pure, no I/O).

The calibration trigger keeps, prescaled, beam events with E_ECAL in a window around the
beam energy (docs/decisions/0005): full-energy electrons. Their E_ECAL / beam energy is
filled per spill into a fixed histogram (`CALIB_BINS` bins over `CALIB_RANGE`), which adds
across spills like every other count; the peak of that histogram is the energy scale,
1.0 when the gains in use are the true ones. A gain drop of x % moves the peak by x %.

The peak is a truncated mean iterated around the mode: robust against the pileup tail
above the peak and the radiative tail below it, and unbiased for a symmetric peak.
docs/monitors.md ("Calibration") states the statistics it has per spill.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from daq.geometry import load_geometry

#: E_ECAL / beam energy range and bins of the calibration histogram (0.25 % per bin: the
#: peak's width, ~1.7 %, spans seven bins)
CALIB_RANGE = (0.5, 1.5)
CALIB_BINS = 400
#: half-width of the truncation window, in units of the window's own RMS estimate
WINDOW_SIGMAS = 2.0
#: starting RMS (relative) of the iteration: a little above the peak's expected width
START_SIGMA = 0.03
ITERATIONS = 8
#: a mean re-centred in a +-2 sigma window of a Gaussian (an M-estimator with
#: psi(u) = u inside): its variance is E[psi^2] / E[psi']^2 sigma^2 / N = 1.292 sigma^2 / n,
#: n the events inside (95.45 %); the RMS inside the window is 0.880 sigma
_TRUNC_VAR = 1.292
_TRUNC_RMS = 0.880


class ScaleEstimate(BaseModel):
    """An energy scale (peak / nominal) with its statistical error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float = Field(description="Peak of E_ECAL / (reference x beam energy).")
    error: float = Field(ge=0, description="Statistical error (1 sigma) of value.")
    width: float = Field(ge=0, description="Relative RMS of the peak (Gaussian-equivalent).")
    n: int = Field(ge=0, description="Calibration events inside the truncation window.")


class CellEnergy(BaseModel):
    """One ECAL cell in the calibration events: its mean energy, its share of their
    summed ECAL energy, and its scale against the reference (`calib_cell_reference`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean_gev: float = Field(description="Mean energy of the cell per calibration event, GeV.")
    error_gev: float = Field(ge=0, description="Statistical error of mean_gev.")
    fraction: float = Field(ge=0, description="The cell's share of the events' ECAL energy.")
    scale: float | None = Field(description="fraction / the reference's fraction x the "
                                "global energy scale; None without a reference for the cell "
                                "or a global scale.")
    scale_error: float | None = Field(description="Statistical error of scale (this "
                                      "spill's; the reference's own is not included).")


@functools.cache
def ecal_cells() -> frozenset[str]:
    """The ECAL channel names of the geometry: the only cells a message may name (metric
    labels stay bounded)."""
    return frozenset(c.name for c in load_geometry().board("ECAL").channels)


def cell_energies(n: int, total: Mapping[str, float], total2: Mapping[str, float],
                  reference: Mapping[str, float], scale: ScaleEstimate | None, *,
                  min_events: int) -> dict[str, CellEnergy] | None:
    """Each cell's mean energy and share from the sums of `n` calibration events (None with
    fewer than `min_events`), and its scale: a gain change of one cell changes its share
    of the ECAL energy, and the global `scale` says how the sum itself moved. Shares, not
    means, against the reference: the calibration trigger's fixed E_ECAL window lets a
    lowered gain take in pileup events that were above it, raising every cell's mean
    (~0.8 % for a 10 % drop of the beam's cell) but hardly the shares."""
    if n < min_events:
        return None
    energy, ref_energy = sum(total.values()), sum(reference.values())
    out = {}
    for cell in sorted(total):
        mean = total[cell] / n
        err = math.sqrt(max(total2.get(cell, 0.0) / n - mean * mean, 0.0) / n)
        frac = total[cell] / energy
        ref = reference.get(cell)
        value = error = None
        if ref and scale is not None and mean > 0:
            value = frac / (ref / ref_energy) * scale.value
            error = value * math.hypot(err / mean, scale.error / scale.value)
        out[cell] = CellEnergy(mean_gev=mean, error_gev=err, fraction=frac, scale=value,
                               scale_error=error)
    return out


def empty_hist() -> np.ndarray:
    return np.zeros(CALIB_BINS, np.int64)


def fill(hist: np.ndarray, e_ecal: np.ndarray, beam_energy_gev: float) -> None:
    """Add the E_ECAL values (GeV) of calibration events to `hist` (outside: dropped; the
    trigger's window, 80-120 GeV, lies inside the range)."""
    lo, hi = CALIB_RANGE
    x = (e_ecal.astype(np.float64) / beam_energy_gev - lo) * (CALIB_BINS / (hi - lo))
    idx = x[(x >= 0) & (x < CALIB_BINS)].astype(np.int64)
    hist += np.bincount(idx, minlength=CALIB_BINS)


def centres() -> np.ndarray:
    lo, hi = CALIB_RANGE
    w = (hi - lo) / CALIB_BINS
    return lo + w * (np.arange(CALIB_BINS) + 0.5)


def peak(hist: np.ndarray, *, reference: float = 1.0, min_events: int = 1
         ) -> ScaleEstimate | None:
    """The energy scale of a calibration histogram; None with fewer than `min_events` in
    the final window. Starts at the mode (smoothed over five bins), then takes the mean
    and RMS of the bins within WINDOW_SIGMAS RMS of the mean, ITERATIONS times."""
    if hist.sum() < min_events:
        return None
    x = centres()
    smooth = np.convolve(hist, np.ones(5), mode="same")
    mean, sigma = float(x[int(np.argmax(smooth))]), START_SIGMA
    n, w = 0, hist
    for _ in range(ITERATIONS):
        inside = np.abs(x - mean) <= WINDOW_SIGMAS * sigma
        w = np.where(inside, hist, 0)
        n = int(w.sum())
        if n < max(min_events, 2):
            return None
        mean = float((w * x).sum() / n)
        rms = math.sqrt(max(float((w * (x - mean) ** 2).sum() / n), 0.0))
        sigma = max(rms / _TRUNC_RMS, (x[1] - x[0]))
    err = sigma * math.sqrt(_TRUNC_VAR / n)
    return ScaleEstimate(value=mean / reference, error=err / reference,
                         width=sigma / mean, n=n)
