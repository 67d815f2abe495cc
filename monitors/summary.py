"""Additive per-spill counts and the figures (pydantic models) computed from them.

Counts add across spills, so run totals are the same figures computed on summed counts.
The JSON of `SpillSummary` is one entry of `na64daq analyze --json` (docs/monitors.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from monitors import calibration
from monitors.calibration import CellEnergy, ScaleEstimate
from monitors.config import MonitorConfig
from monitors.identify import SPECIES_NAMES
from monitors.stats import Estimate, estimate

#: trigger types by bit position (docs/dataflow.md): PHYSICS=1 BEAM=2 RANDOM=4 CALIBRATION=8.
TRIGGER_TYPES = ("physics", "beam", "random", "calibration")
BEAM_BIT = 2
CALIBRATION_BIT = 8


@dataclass
class Counts:
    """Event counts of one spill (or, summed, of a run). Everything here is additive."""

    events: int = 0  # processed: events in features messages
    complete: int = 0  # events with every board present (the physics sample)
    incomplete: int = 0  # events with at least one board missing
    beam_cond: int = 0  # events meeting the beam condition (cond & BEAM)
    beam_cond_complete: int = 0  # the same among complete events (the EOT count)
    accepted: int = 0  # events with bits != 0
    shed: int = 0  # events dropped for dead time (builder spill_end)
    pileup: int = 0  # complete events with beam multiplicity > 1
    mult_sum: int = 0  # sum of multiplicities over complete events
    electrons: int = 0  # identified electron sample
    veto_zero: int = 0  # electrons with E_VETO below its zero threshold
    hcal_zero: int = 0  # electrons with E_HCAL below its zero threshold
    signal_box: int = 0
    sideband_c: int = 0  # box candidates in sideband C (identify.sideband_c)
    dimuons: int = 0  # identify.dimuon
    saturated_box: int = 0  # identify.saturated_candidates: out of the box (ECAL saturated)
    saturated_c: int = 0  # ... and out of sideband C
    untracked: int = 0  # complete events whose features had no spectrometer arrays
    shadow_seen: int = 0  # features messages that carried a shadow configuration
    triggers: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))
    shadow: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))
    #: complete events isolated in time (identify.isolated): the composition's sample
    isolated: int = 0
    species: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))  # of those
    missing_board: dict[str, int] = field(default_factory=dict)  # from the `missing` bits
    incomplete_board: dict[str, int] = field(default_factory=dict)  # builder's account
    builder_gaps: dict[str, int] = field(default_factory=dict)
    #: E_ECAL / beam energy of calibration-trigger events (monitors.calibration)
    calib_hist: np.ndarray = field(default_factory=calibration.empty_hist)
    #: per ECAL cell: summed energy and squared energy of the complete calibration events
    #: (features meta `calib_cells`), and how many events those sums are over
    calib_cells_n: int = 0
    calib_cell_sum: dict[str, float] = field(default_factory=dict)
    calib_cell_sum2: dict[str, float] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, dict):
                for k, v in b.items():
                    a[k] = a.get(k, 0) + v
            elif isinstance(a, np.ndarray):
                a += b
            else:
                setattr(self, f.name, a + b)


Closed = Literal["complete", "forced"]


class Figures(BaseModel):
    """Figures common to a spill and a run."""

    model_config = ConfigDict(extra="forbid")

    events: int = Field(description="Processed events (features received).")
    eot: float | None = Field(description="Electrons on target: beam-condition events "
                              "among complete events / live_time_ratio; None when no event "
                              "was live.")
    live_time_ratio: float = Field(description="complete / (processed + shed): the part of "
                                   "the spill in which every board delivered and nothing "
                                   "was shed.")
    shed: int = Field(description="Events the builder dropped for dead time.")
    beam_triggers: int = Field(description="Processed events meeting the beam condition "
                               "(complete or not).")
    triggers: dict[str, int] = Field(description="Events per fired trigger type.")
    accepted: int = Field(description="Events with any trigger bit fired.")
    accepted_ratio: float | None = Field(description="accepted / events.")
    shadow_triggers: dict[str, int] | None = Field(
        description="Events the shadow configuration would fire, None when none ran.")
    pileup_fraction: float | None = Field(description="Complete events with multiplicity > 1.")
    mean_multiplicity: float | None = Field(description="Mean beam multiplicity.")
    veto_efficiency: Estimate = Field(description="VETO zero-threshold efficiency.")
    hcal_efficiency: Estimate = Field(description="HCAL zero-threshold efficiency.")
    composition: dict[str, float | None] = Field(description=(
        "Species fractions among the composition_events."))
    composition_intervals: dict[str, Estimate] = Field(description="Same, with intervals.")
    composition_events: int = Field(description=(
        "Complete events the composition is measured on: those isolated in time, with no "
        "other beam event within the SRD's reach (monitors.identify.isolated; every complete "
        "event in a stream without the trigger's neighbour gaps)."))
    incomplete_events: int = Field(description="Processed events with a board missing.")
    incomplete_fraction: float | None = Field(description="incomplete_events / events.")
    incomplete_by_board: dict[str, int] = Field(
        description="Incomplete events per board (builder's count, else the missing bits).")
    builder_gaps: dict[str, int] = Field(description="Sequence gaps the builder saw per board.")
    signal_box: int | None = Field(description="Signal-box events; None when blind.")
    sideband_c: int = Field(description="Box candidates in sideband C (E_ECAL from the box's "
                            "edge to the trigger's cut, E_HCAL in the box's range).")
    ecal_saturated: dict[str, int | None] = Field(description=(
        "Events the ECAL saturation cut took out of the signal box (`signal`; null when "
        "blind) and out of sideband C (`C`): they passed every other cut of the region, "
        "but an ECAL channel saturated and E_ECAL reads low."))
    dimuons: int = Field(description="Dimuon (e Z -> e Z mu mu) candidates.")
    dimuons_per_eot: float | None = Field(description="dimuons / eot.")
    untracked_events: int = Field(description="Complete events without the spectrometer's "
                                  "arrays (streams recorded before it): no momentum or track "
                                  "cut was possible for them.")
    ecal_scale: ScaleEstimate | None = Field(default=None, description=(
        "ECAL energy scale: peak of E_ECAL of the calibration-trigger events / (calib_"
        "reference x beam energy), 1.0 nominal; None with fewer than calib_min_events."))
    ecal_cells: dict[str, CellEnergy] | None = Field(default=None, description=(
        "Per ECAL cell with energy in the calibration events: its mean energy, share and "
        "scale against calib_cell_reference; None with fewer than calib_min_events."))


class SpillSummary(Figures):
    """One spill: the JSON published on na64/monitor/spill and listed by analyze."""

    run: int = Field(description="Run number.")
    spill: int = Field(description="Spill number.")
    source: Literal["live", "replay"] = Field(description="Live data or a replayed file.")
    closed: Closed = Field(description="complete: spill_end and every slice arrived; "
                           "forced: closed without them (lost messages, end of run).")
    slices: int | None = Field(description="Built slices the builder announced.")
    slices_seen: int = Field(description="Features messages received for the spill.")
    trigger_cfg: str | None = Field(default=None, description=(
        "Content hash of the trigger configuration the spill was processed with, from its "
        "features messages (several, comma-separated, would mean a change inside the "
        "spill); None when none said."))
    trigger_ecal_max_gev: float | None = Field(default=None, description=(
        "E_ECAL threshold of the physics trigger the spill ran with (`ecal_max_gev` of the "
        "configuration in the builder's spill_start); null when it did not say."))
    scalers: dict[str, int] = Field(description="Builder's scalers (S1 S2 S3 V1 beam).")


class RunTotals(Figures):
    """The same figures over every closed spill of a run."""

    spills: int = Field(description="Closed spills.")
    forced_spills: int = Field(description="Spills closed without all their messages.")
    stream_gaps: dict[str, int] = Field(description="Messages lost per source (seq gaps).")
    refused: dict[str, int] = Field(description="Messages refused, by reason.")


def _ratio(k: int, n: int) -> float | None:
    return k / n if n else None


def _by_board(c: Counts) -> dict[str, int]:
    return dict(c.incomplete_board) if c.incomplete_board else dict(c.missing_board)


def live_time(complete: int, events: int, shed: int) -> float:
    """complete / (events + shed): the part of the spill in which every board delivered
    and nothing was shed (a board that stops mid-spill makes the rest of the spill dead,
    docs/monitors.md "EOT with a board that stops"); 1.0 for a spill without events. The
    one definition of the live monitor and of `analyze` on a recorded file."""
    total = events + shed
    return complete / total if total else 1.0


def eot(beam_complete: float, live: float) -> float | None:
    """Electrons on target: beam-condition events among complete events (counted, or
    estimated from a prescaled trigger) over the live-time ratio; None when nothing was
    live."""
    return beam_complete / live if live > 0 else None


def figures(c: Counts, cfg: MonitorConfig, *, shadow_ran: bool | None = None) -> dict:
    """The Figures fields (as a dict for model construction) from counts."""
    live = live_time(c.complete, c.events, c.shed)
    electrons = eot(c.beam_cond_complete, live)
    ran = c.shadow_seen > 0 if shadow_ran is None else shadow_ran
    scale = calibration.peak(c.calib_hist, reference=cfg.calib_reference,
                             min_events=cfg.calib_min_events)
    return {
        "events": c.events,
        "eot": electrons,
        "live_time_ratio": live,
        "shed": c.shed,
        "beam_triggers": c.beam_cond,
        "triggers": dict(zip(TRIGGER_TYPES, map(int, c.triggers), strict=True)),
        "accepted": c.accepted,
        "accepted_ratio": _ratio(c.accepted, c.events),
        "shadow_triggers": (dict(zip(TRIGGER_TYPES, map(int, c.shadow), strict=True))
                            if ran else None),
        "pileup_fraction": _ratio(c.pileup, c.complete),
        "mean_multiplicity": _ratio(c.mult_sum, c.complete),
        "veto_efficiency": estimate(c.veto_zero, c.electrons, cfg.confidence),
        "hcal_efficiency": estimate(c.hcal_zero, c.electrons, cfg.confidence),
        "composition": {s: _ratio(int(k), c.isolated)
                        for s, k in zip(SPECIES_NAMES, c.species, strict=True)},
        "composition_intervals": {s: estimate(int(k), c.isolated, cfg.confidence)
                                  for s, k in zip(SPECIES_NAMES, c.species, strict=True)},
        "composition_events": c.isolated,
        "incomplete_events": c.incomplete,
        "incomplete_fraction": _ratio(c.incomplete, c.events),
        "incomplete_by_board": _by_board(c),
        "builder_gaps": dict(c.builder_gaps),
        "signal_box": None if cfg.blind else c.signal_box,
        "sideband_c": c.sideband_c,
        "ecal_saturated": {"signal": None if cfg.blind else c.saturated_box,
                           "C": c.saturated_c},
        "dimuons": c.dimuons,
        "dimuons_per_eot": c.dimuons / electrons if electrons else None,
        "untracked_events": c.untracked,
        "ecal_scale": scale,
        "ecal_cells": calibration.cell_energies(
            c.calib_cells_n, c.calib_cell_sum, c.calib_cell_sum2, cfg.calib_cell_reference,
            scale, min_events=cfg.calib_min_events),
    }
