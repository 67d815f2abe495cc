"""E_ECAL, E_HCAL and E_ECAL-E_HCAL spectra (hist), one snapshot per spill, exportable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import hist
import numpy as np

from monitors.config import MonitorConfig

SPECTRA = ("ecal", "hcal", "plane")


def spectrum_range(cfg: MonitorConfig) -> tuple[float, float]:
    """Lower and upper edge (GeV) of every spectrum axis."""
    return 0.0, cfg.spectrum_max_ratio * cfg.beam_energy_gev


@dataclass
class Spectra:
    """The three histograms of one spill (or, summed, of a run). Energies in GeV."""

    ecal: hist.Hist
    hcal: hist.Hist
    plane: hist.Hist
    ecal_sum: float = 0.0  # sums of the filled energies, for Prometheus histogram _sum
    hcal_sum: float = 0.0

    @classmethod
    def empty(cls, cfg: MonitorConfig) -> Spectra:
        lo, hi = spectrum_range(cfg)

        def axis(bins: int, name: str) -> hist.axis.Regular:
            return hist.axis.Regular(bins, lo, hi, name=name, label=f"{name} [GeV]")

        return cls(
            ecal=hist.Hist(axis(cfg.ecal_bins, "e_ecal"), storage=hist.storage.Int64()),
            hcal=hist.Hist(axis(cfg.hcal_bins, "e_hcal"), storage=hist.storage.Int64()),
            plane=hist.Hist(axis(cfg.plane_bins, "e_ecal"), axis(cfg.plane_bins, "e_hcal"),
                            storage=hist.storage.Int64()),
        )

    def fill(self, e_ecal: np.ndarray, e_hcal: np.ndarray) -> None:
        self.ecal.fill(e_ecal)
        self.hcal.fill(e_hcal)
        self.plane.fill(e_ecal, e_hcal)
        self.ecal_sum += float(np.nansum(e_ecal, dtype=np.float64))
        self.hcal_sum += float(np.nansum(e_hcal, dtype=np.float64))

    def add(self, other: Spectra) -> None:
        self.ecal += other.ecal
        self.hcal += other.hcal
        self.plane += other.plane
        self.ecal_sum += other.ecal_sum
        self.hcal_sum += other.hcal_sum

    def copy(self) -> Spectra:
        return Spectra(self.ecal.copy(), self.hcal.copy(), self.plane.copy(), self.ecal_sum,
                       self.hcal_sum)

    def to_dict(self) -> dict[str, dict[str, list]]:
        """JSON-able: edges per axis and counts (under/overflow included, flow=True)."""
        out: dict[str, dict[str, list]] = {}
        for name in SPECTRA:
            h: hist.Hist = getattr(self, name)
            out[name] = {
                "edges": [ax.edges.tolist() for ax in h.axes],
                "counts": h.values(flow=True).astype(np.int64).tolist(),
            }
        return out


#: E_ECAL bucket edges (GeV) wanted in Prometheus, as fractions of the beam energy: 10 %
#: steps below the trigger's region, every bin from 85 % to 105 % (the missing-energy
#: threshold, ~90 GeV, and the beam peak, 100 GeV, each fall on an edge), coarse above
ECAL_BUCKET_FRACTIONS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, *(0.85 + 0.0125 * i for i in range(1, 17)),
    1.1, 1.2, 1.3, 1.4, 1.5)


def bucket_edges(h: hist.Hist, wanted: Sequence[float]) -> list[int]:
    """Indices of the axis edges nearest to each `wanted` value, in order, without
    duplicates; the last edge always (buckets must cover the axis)."""
    edges = h.axes[0].edges
    idx = sorted({int(np.abs(edges - w).argmin()) for w in wanted} | {len(edges) - 1})
    return [i for i in idx if i > 0]


def ecal_bucket_edges(h: hist.Hist, beam_energy_gev: float) -> list[int]:
    """The Prometheus bucket edges of the E_ECAL spectrum `h` (see ECAL_BUCKET_FRACTIONS)."""
    fine = [i for i in range(1, len(h.axes[0].edges))
            if 0.85 <= h.axes[0].edges[i] / beam_energy_gev <= 1.05 + 1e-9]
    wanted = [f * beam_energy_gev for f in ECAL_BUCKET_FRACTIONS]
    return sorted(set(bucket_edges(h, wanted)) | set(fine))


def cumulative_buckets(h: hist.Hist, every: int | None = None, *,
                       at: Sequence[int] | None = None) -> tuple[list[float], list[int], int]:
    """Prometheus-style cumulative buckets of a 1-D histogram at every `every`-th edge, or
    at the edge indices `at` (which must be bin edges, so every bucket count is exact).

    Returns (upper edges, cumulative counts at those edges, total including overflow); the
    underflow (negative energies from noise) is counted in every bucket, as `le` demands.
    """
    values = h.values(flow=True).astype(np.int64)  # [under, bins..., over]
    cum = np.cumsum(values)
    edges = h.axes[0].edges
    if at is not None:
        idx = list(at)
    else:
        idx = list(range(every or 1, len(edges), every or 1))
        if idx[-1] != len(edges) - 1:
            idx.append(len(edges) - 1)
    # edges as labels: 91.25, not the 91.24999999999999 of 73 x 1.25 in floating point
    return [round(float(edges[i]), 6) for i in idx], [int(cum[i]) for i in idx], int(cum[-1])


def to_json(per_spill: Mapping[int, Spectra]) -> dict[str, dict]:
    """Per-spill snapshots of a run as {spill: Spectra.to_dict()} (keys as strings for JSON)."""
    return {str(s): sp.to_dict() for s, sp in sorted(per_spill.items())}
