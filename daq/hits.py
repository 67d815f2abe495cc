"""Zero-suppressed readout: a board sends only the channels that read something.

A zero-suppressed board slice of `count` events carries `nhit` (uint8 (count,): channels read
out per event) and per-hit arrays named `hit_*` whose axis 0 runs over all hits of the slice,
event after event, channels ascending within an event (the CSR layout: event e's hits are
`offsets(nhit)[e]:offsets(nhit)[e + 1]`). docs/dataflow.md fixes the arrays; this module is
the one place that checks, builds, selects and expands them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from daq.errors import WireError
from daq.wire import HIT_PREFIX, is_hit_array

__all__ = ["FEATURE_HITS", "HIT_PREFIX", "T_UNIT_NS", "VALUES", "WAVE_HITS", "check",
           "densify", "is_hit_array", "offsets", "select", "sparsify"]

#: per-hit arrays of a feature-mode board slice, and their dtypes
FEATURE_HITS: dict[str, np.dtype] = {
    "hit_ch": np.dtype("|u1"),   # channel index in the board's geometry order
    "hit_amp": np.dtype("<i2"),  # pedestal-subtracted peak amplitude, ADC counts
    "hit_t": np.dtype("<i2"),    # peak time relative to the in-time peak, units of T_UNIT_NS
    "hit_np": np.dtype("|u1"),   # pulses found in the gate
}
#: per-hit arrays of a zero-suppressed waveform-mode board slice (hit_wave: (nhits, samples))
WAVE_HITS: dict[str, np.dtype] = {"hit_ch": np.dtype("|u1"), "hit_wave": np.dtype("<i2")}
#: a board slice's detector values (samples and features): the event builder checks their
#: shapes and forwards them unread, the trigger reads them (and checks their CRCs)
VALUES = frozenset({"wave", *WAVE_HITS, *FEATURE_HITS}) - {"hit_ch"}
#: unit of `hit_t`, ns
T_UNIT_NS = 0.1


def offsets(nhit: np.ndarray) -> np.ndarray:
    """int64 (count + 1,): where each event's hits start, and the total at the end."""
    out = np.zeros(len(nhit) + 1, np.int64)
    np.cumsum(nhit, out=out[1:])
    return out


def check(arrays: Mapping[str, np.ndarray], count: int, nch: int,
          spec: Mapping[str, np.dtype], *, prefix: str = "", samples: int = 0,
          what: str = "slice") -> int:
    """Validate the hit arrays of one board (names `prefix + name`); return the hit count.

    Raises WireError naming the array and what is wrong with it. `samples` is the second
    dimension of `hit_wave`.
    """
    nhit = arrays.get(prefix + "nhit")
    if nhit is None or nhit.dtype != np.uint8 or nhit.shape != (count,):
        got = "absent" if nhit is None else f"{nhit.dtype}{nhit.shape}"
        raise WireError("shape", f"{what}: {prefix}nhit is {got}, expected uint8({count},)")
    total = int(nhit.sum(dtype=np.int64))
    if count and int(nhit.max()) > nch:
        raise WireError("shape", f"{what}: {prefix}nhit has an event with {int(nhit.max())} "
                                 f"hits, the board has {nch} channels")
    for name, dt in spec.items():
        a = arrays.get(prefix + name)
        shape = (total, samples) if name == "hit_wave" else (total,)
        if a is None or a.dtype != dt or a.shape != shape:
            got = "absent" if a is None else f"{a.dtype}{a.shape}"
            raise WireError("shape", f"{what}: {prefix}{name} is {got}, expected "
                                     f"{dt}{shape} ({total} hits)")
    ch = arrays[prefix + "hit_ch"]
    if total and int(ch.max()) >= nch:
        raise WireError("shape", f"{what}: {prefix}hit_ch has channel {int(ch.max())}, the "
                                 f"board has {nch}")
    return total


def sparsify(mask: np.ndarray, dense: Mapping[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(nhit, hits) keeping the channels where `mask` (count, nch) is set.

    `dense` maps a per-hit name to a (count, nch) array, or for `hit_wave` to a
    (count, samples, nch) one; `hit_ch` is added.
    """
    nhit = mask.sum(axis=1, dtype=np.int64).astype(np.uint8)
    _, ch = np.nonzero(mask)
    hits = {"hit_ch": ch.astype(np.uint8)}
    for name, a in dense.items():
        if a.ndim == 3:  # (count, samples, nch) -> (nhits, samples)
            hits[name] = np.ascontiguousarray(a.transpose(0, 2, 1)[mask])
        else:
            hits[name] = a[mask]
    return nhit, hits


def densify(nhit: np.ndarray, ch: np.ndarray, values: np.ndarray, nch: int,
            fill: float | int = 0) -> np.ndarray:
    """(count, nch) array of `values` at the hit channels, `fill` elsewhere."""
    out = np.full((len(nhit), nch), fill, values.dtype)
    ev = np.repeat(np.arange(len(nhit)), nhit)
    out[ev, ch] = values
    return out


def select(nhit: np.ndarray, hits: Mapping[str, np.ndarray], keep: np.ndarray
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The hits of events `keep` (ascending, distinct int indices), in the same layout."""
    keep = np.asarray(keep, np.int64)
    n = nhit[keep]
    if len(keep) == 0:
        return n.astype(np.uint8), {k: v[:0] for k, v in hits.items()}
    # where each kept event's hits start: the hits between consecutive kept events, summed
    # (a trigger keeps few events: this reads nhit once without a cumulative sum over it)
    bounds = np.concatenate(([0], keep))
    between = np.add.reduceat(nhit, bounds, dtype=np.int64)[:-1]
    between[0] = between[0] if keep[0] > 0 else 0  # reduceat of an empty range is not 0
    starts = np.cumsum(between)
    total = int(n.sum(dtype=np.int64))
    # hit k of the selection: starts[event] + (k - first hit of that event in the selection)
    first = np.zeros(len(keep), np.int64)
    np.cumsum(n[:-1], out=first[1:])
    idx = np.repeat(starts - first, n) + np.arange(total, dtype=np.int64)
    return n.astype(np.uint8), {k: v[idx] for k, v in hits.items()}
