"""The shift page's documents (pure): the live figures and every plot's data as JSON.

`state(...)` is what the page shows in numbers; `histogram(...)` one spectrum or the
E_ECAL-E_HCAL plane as plain JSON (edges, counts, under/overflow; numpy or any client
reads it), and `jsroot(...)` the same histogram as a ROOT TH1D/TH2D JSON object, which
JSROOT reads with `JSROOT.parse` and draws as it draws a ROOT file's histogram.
docs/monitors.md ("Shift page") lists the endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hist
import numpy as np

from monitors.alarms import ALARMS, spill_values
from monitors.calibration import ScaleEstimate
from monitors.config import MonitorConfig
from monitors.identify import regions
from monitors.spectra import SPECTRA, Spectra
from monitors.summary import TRIGGER_TYPES, SpillSummary

#: how many recent spills the efficiency and rate plots show
RECENT_SPILLS = 30
_TITLES = {"ecal": "E_ECAL", "hcal": "E_HCAL", "plane": "E_ECAL vs E_HCAL"}


def shown(spectra: Spectra | None, cfg: MonitorConfig) -> Spectra:
    """The spectra as the page may show them: blind (`cfg.blind`), the plane's bins that
    overlap the signal box (`identify.regions`, their underflow included) read zero; an
    empty set when none. (What they held, every event with no identification cut, follows
    from the totals; the box's count, after its cuts, does not.)"""
    sp = spectra or Spectra.empty(cfg)
    if not cfg.blind:
        return sp
    out = sp.copy()
    box = regions(cfg)["signal"]
    ex, eh = (np.asarray(ax.edges) for ax in out.plane.axes)
    view = out.plane.view(flow=True)
    # storage index 0 is the underflow bin: bin i (from 0) is storage i + 1
    in_x = np.concatenate([[True], (ex[:-1] < box["ecal_hi"]) & (ex[1:] > box["ecal_lo"]),
                           [False]])
    in_y = np.concatenate([[True], (eh[:-1] < box["hcal_hi"]) & (eh[1:] > box["hcal_lo"]),
                           [False]])
    view[np.ix_(in_x, in_y)] = 0
    return out


def histogram(h: hist.Hist, name: str, *, scope: str, run: int | None,
              spill: int | None) -> dict[str, Any]:
    """Plain JSON of a 1-D or 2-D histogram: `counts` without flow bins (nested [x][y] in
    2-D), `underflow`/`overflow` (1-D) or `flow` (2-D: everything outside the axes)."""
    values = h.values(flow=True).astype(np.int64)
    axes = [{"name": ax.name, "label": ax.label, "edges": [round(float(e), 6)
                                                          for e in ax.edges]}
            for ax in h.axes]
    doc: dict[str, Any] = {"name": name, "title": _TITLES.get(name, name), "scope": scope,
                           "run": run, "spill": spill, "axes": axes,
                           "entries": int(values.sum())}
    if h.ndim == 1:
        doc |= {"counts": values[1:-1].tolist(), "underflow": int(values[0]),
                "overflow": int(values[-1])}
    else:
        inner = values[1:-1, 1:-1]
        doc |= {"counts": inner.tolist(), "flow": int(values.sum() - inner.sum())}
    return doc


def jsroot(h: hist.Hist, name: str, *, title: str | None = None) -> dict[str, Any]:
    """`h` as a ROOT TH1D/TH2D in ROOT's JSON form (fixed bins; fArray holds every bin, flow
    bins included, x fastest), readable by JSROOT.parse()."""
    values = h.values(flow=True).astype(np.float64)
    axes = list(h.axes)

    def axis(ax: Any, which: str) -> dict[str, Any]:
        return {"_typename": "TAxis", "fName": which, "fTitle": ax.label,
                "fNbins": len(ax.edges) - 1, "fXmin": float(ax.edges[0]),
                "fXmax": float(ax.edges[-1]), "fXbins": [], "fFirst": 0, "fLast": 0,
                "fBits2": 0, "fTimeDisplay": False, "fTimeFormat": "", "fLabels": None,
                "fModLabs": None}

    kind = "TH1D" if h.ndim == 1 else "TH2D"
    # ROOT orders bins x fastest: transpose a [x][y] array before flattening
    flat = values if h.ndim == 1 else values.T
    doc: dict[str, Any] = {
        "_typename": kind, "fName": name, "fTitle": title or _TITLES.get(name, name),
        "fXaxis": axis(axes[0], "xaxis"),
        "fYaxis": axis(axes[1], "yaxis") if h.ndim == 2 else {
            **axis(axes[0], "yaxis"), "fNbins": 1, "fXmin": 0.0, "fXmax": 1.0,
            "fTitle": "events"},
        "fZaxis": {"_typename": "TAxis", "fName": "zaxis", "fTitle": "", "fNbins": 1,
                   "fXmin": 0.0, "fXmax": 1.0, "fXbins": []},
        "fEntries": float(values.sum()), "fTsumw": float(values.sum()), "fMaximum": -1111.0,
        "fMinimum": -1111.0, "fNcells": int(flat.size), "fArray": flat.ravel().tolist(),
        "fSumw2": [], "fBarOffset": 0, "fBarWidth": 1000, "fNormFactor": 0.0,
        "fOption": "", "fFunctions": {"_typename": "TList", "name": "TList", "arr": [],
                                      "opt": []},
        "fBufferSize": 0, "fBuffer": [], "fBinStatErrOpt": 0, "fStatOverflows": 2,
        "fLineColor": 602, "fLineStyle": 1, "fLineWidth": 1, "fFillColor": 0,
        "fFillStyle": 1001, "fMarkerColor": 1, "fMarkerStyle": 1, "fMarkerSize": 1.0,
    }
    return doc


def spectra_docs(spectra: Spectra | None, cfg: MonitorConfig, *, scope: str,
                 run: int | None, spill: int | None) -> dict[str, dict[str, Any]]:
    """{ecal|hcal|plane: histogram(...)}, the plane blinded (`shown`); an empty histogram
    when nothing closed yet."""
    sp = shown(spectra, cfg)
    return {n: histogram(getattr(sp, n), n, scope=scope, run=run, spill=spill)
            for n in SPECTRA}


def _est(e: Any) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"value": e.value, "low": e.low, "high": e.high, "n": e.n, "k": e.k}


def _rates(s: SpillSummary, seconds: float | None) -> dict[str, float | None]:
    return {t: (s.triggers.get(t, 0) / seconds if seconds else None) for t in TRIGGER_TYPES}


def spill_row(s: SpillSummary, seconds: float | None) -> dict[str, Any]:
    """One spill as the page's recent-spills plots take it."""
    return {"spill": s.spill, "events": s.events, "eot": s.eot,
            "live_time": s.live_time_ratio, "pileup": s.pileup_fraction,
            "veto": _est(s.veto_efficiency), "hcal": _est(s.hcal_efficiency),
            "composition": dict(s.composition), "rates_hz": _rates(s, seconds),
            "incomplete_by_board": dict(s.incomplete_by_board), "closed": s.closed,
            "ecal_scale": _scale(s.ecal_scale), "seconds": seconds}


def _scale(e: ScaleEstimate | None) -> dict[str, Any] | None:
    return None if e is None else e.model_dump()


def state(*, cfg: MonitorConfig, run: int | None, run_state: str, source: str,
          spills: Sequence[SpillSummary], intervals: Mapping[int, float | None],
          totals: Any, eot_run: float, eot_total: float, beam_on: bool,
          since_last_spill_s: float | None, raised: Mapping[str, bool],
          times_raised: Mapping[str, int], runbooks: Mapping[str, str],
          lost_run: int, boards: Sequence[str], updated: float | None,
          spills_closed: int) -> dict[str, Any]:
    """Everything the shift page shows in numbers (the same figures /metrics exports).

    `spills`: the run's recent spill summaries, oldest first; `intervals`: seconds between
    each spill's close and the one before (or the run's start) by spill, the time base of
    the rates in Hz (events per second of the SPS cycle, as Prometheus' rate() takes them).
    """
    last = spills[-1] if spills else None
    recent = [spill_row(s, intervals.get(s.spill)) for s in spills[-RECENT_SPILLS:]]
    values = spill_values(last, cfg.alarms.min_sample) if last is not None else {}
    alarms = []
    for name, (_, what) in ALARMS.items():
        value = since_last_spill_s if name == "no_spill" else values.get(name)
        alarms.append({"name": name, "what": what, "raised": bool(raised.get(name)),
                       "times_raised": int(times_raised.get(name, 0)), "value": value,
                       "runbook": runbooks.get(name, "")})
    t = totals
    incomplete_run = dict(t.incomplete_by_board) if t is not None else {}
    gaps_run = dict(t.builder_gaps) if t is not None else {}
    spill_board = dict(last.incomplete_by_board) if last is not None else {}
    return {
        "source": source, "run": run, "run_state": run_state,
        "spill": last.spill if last is not None else None,
        "spills_closed": spills_closed, "updated": updated,
        "beam_on": beam_on, "since_last_spill_s": since_last_spill_s,
        "eot": {"run": eot_run, "total": eot_total, "last_spill": last.eot if last else None},
        "rates_hz": recent[-1]["rates_hz"] if recent else dict.fromkeys(TRIGGER_TYPES),
        "triggers": dict(last.triggers) if last is not None else {},
        "live_time": last.live_time_ratio if last is not None else None,
        "dead_time": (1 - last.live_time_ratio) if last is not None else None,
        "live_time_run": t.live_time_ratio if t is not None else None,
        "pileup": last.pileup_fraction if last is not None else None,
        "pileup_run": t.pileup_fraction if t is not None else None,
        "efficiency": {"veto": _est(last.veto_efficiency) if last else None,
                       "hcal": _est(last.hcal_efficiency) if last else None,
                       "veto_run": _est(t.veto_efficiency) if t is not None else None,
                       "hcal_run": _est(t.hcal_efficiency) if t is not None else None},
        "composition": dict(last.composition) if last is not None else {},
        "composition_run": dict(t.composition) if t is not None else {},
        # the events the composition counts: those no other beam event came near
        "composition_events": last.composition_events if last is not None else None,
        "composition_events_run": t.composition_events if t is not None else None,
        "isolation_ns": [cfg.isolation_before_ns, cfg.isolation_after_ns],
        "calibration": {"scale": _scale(last.ecal_scale) if last is not None else None,
                        "scale_run": _scale(t.ecal_scale) if t is not None else None,
                        "band": cfg.alarms.ecal_scale.model_dump(),
                        "cells": ({k: c.model_dump() for k, c in last.ecal_cells.items()}
                                  if last is not None and last.ecal_cells else {})},
        "boards": [{"board": b, "incomplete_spill": int(spill_board.get(b, 0)),
                    "incomplete_run": int(incomplete_run.get(b, 0)),
                    "gaps_run": int(gaps_run.get(b, 0))} for b in boards],
        "lost_run": lost_run, "shed_run": int(t.shed) if t is not None else 0,
        "alarms": alarms, "recent": recent, "regions": regions(cfg),
        "blind": cfg.blind,
        "signal_box": last.signal_box if last is not None else None,
        "sideband_c": last.sideband_c if last is not None else None,
        "dimuons": last.dimuons if last is not None else None,
        "dimuons_per_eot": last.dimuons_per_eot if last is not None else None,
        # the physics trigger's cut as the last spill ran with it (a trigger expert may
        # have moved it), else the monitors' own
        "thresholds": {"trigger_ecal_gev": last.trigger_ecal_max_gev
                       if last is not None and last.trigger_ecal_max_gev is not None
                       else cfg.trigger_ecal_max_gev,
                       "beam_gev": cfg.beam_energy_gev},
    }
