"""MonitorConfig: identification cuts, zero thresholds, signal box, spectra and alarm bands."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from pydantic import Field, model_validator

from daq.config import StrictModel
from daq.errors import ConfigError
from monitors.calibration import ecal_cells
from trigger.config import ECAL_MAX_GEV, PS_MIN_GEV


class Band(StrictModel):
    """An allowed range for one figure; leaving it raises an alarm, re-entering clears it."""

    low: float | None = Field(default=None, ge=-1e12, le=1e12,
                              description="Lowest allowed value; None means unbounded below.")
    high: float | None = Field(default=None, ge=-1e12, le=1e12,
                               description="Highest allowed value; None means unbounded above.")

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"band low {self.low} is above high {self.high}")
        return self

    def contains(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class AlarmConfig(StrictModel):
    """Bands of the figures that raise alarms (docs/monitors.md lists the alarm names)."""

    veto_efficiency: Band = Field(default=Band(low=0.90),
                                  description="VETO zero-threshold efficiency band.")
    hcal_efficiency: Band = Field(default=Band(low=0.90),
                                  description="HCAL zero-threshold efficiency band.")
    pileup: Band = Field(default=Band(high=0.15),
                         description="Band of the fraction of events with beam multiplicity > 1.")
    hadron_fraction: Band = Field(default=Band(high=0.05),
                                  description="Band of the hadron fraction of the beam.")
    incomplete_fraction: Band = Field(default=Band(high=0.01),
                                      description="Band of the fraction of incomplete events.")
    ecal_scale: Band = Field(default=Band(low=0.97, high=1.03),
                             description="Band of the ECAL energy scale (calibration peak / "
                             "nominal): +-3 %.")
    min_sample: int = Field(default=200, ge=1, le=10**9,
                            description="Efficiency and composition alarms are only judged on a "
                            "spill whose sample has at least this many events.")
    no_spill_s: float = Field(default=60.0, gt=0, le=86400,
                              description="Raise `no_spill` when no spill closed for this long "
                              "(s) while a run is open.")


class MonitorConfig(StrictModel):
    """Everything the monitor figures depend on. Energies in GeV."""

    beam_energy_gev: float = Field(default=100.0, gt=0, le=1000,
                                   description="Nominal beam energy.")
    srd_min_gev: float = Field(default=0.001, ge=0, le=1,
                               description="E_SRD at or above which a particle is SRD-tagged "
                               "(electron-like synchrotron radiation).")
    srd_max_gev: float = Field(default=0.3, gt=0, le=10,
                               description="E_SRD above which the tag is refused (showers, "
                               "noise bursts). Generous: pileup electrons add their SRD too.")
    isolation_before_ns: int = Field(default=105, ge=0, le=65534, description=(
        "Composition: an event counts only when no other beam event came within this many "
        "ns before it (the trigger's dt_prev): an earlier electron's SRD pulse tail reaches "
        "the SRD window from up to ~100 ns before (docs/monitors.md, \"Composition\")."))
    isolation_after_ns: int = Field(default=35, ge=0, le=65534, description=(
        "Composition: ... and none within this many ns after it (dt_next): a later "
        "electron's rising edge reaches the SRD window from up to ~33 ns after."))
    ps_min_gev: float = Field(default=PS_MIN_GEV, ge=0, le=100,
                              description="E_PS at or above which the shower started in the "
                              "preshower (electron-like); the physics trigger's cut "
                              "(trigger.config.PS_MIN_GEV), so the box keeps what it kept.")
    ecal_min_ratio: float = Field(default=0.7, ge=0, le=2,
                                  description="Electron sample: E_ECAL >= ratio x beam energy. "
                                  "No upper cut, since pileup adds energy and an upper cut "
                                  "would bias the efficiencies.")
    veto_zero_gev: float = Field(default=0.002, gt=0, le=1,
                                 description="VETO zero-energy threshold (a few times the noise "
                                 "of the summed counters, far below a MIP).")
    hcal_zero_gev: float = Field(default=1.0, gt=0, le=100,
                                 description="HCAL zero-energy threshold on the sum of modules.")
    muon_module_min_gev: float = Field(default=1.0, ge=0, le=100,
                                       description="Muon: every HCAL module, the zero-degree "
                                       "HCAL4 included, sees at least this (a MIP in each).")
    muon_hcal_max_gev: float = Field(default=15.0, gt=0, le=1000,
                                     description="Muon: E_HCAL at most this (no shower).")
    hadron_hcal_min_gev: float = Field(default=5.0, gt=0, le=1000,
                                       description="Hadron: untagged by SRD, E_HCAL above this.")
    signal_ecal_max_gev: float = Field(default=50.0, gt=0, le=1000,
                                       description="Signal box: E_ECAL below this.")
    signal_hcal_max_gev: float = Field(default=1.0, gt=0, le=1000,
                                       description="Signal box: E_HCAL below this.")
    signal_p_min_gev: float = Field(default=90.0, ge=0, le=1000,
                                    description="Signal box and sidebands: the spectrometer's "
                                    "momentum at least this (paper cut (i): 100 +- 10 GeV).")
    signal_p_max_gev: float = Field(default=110.0, gt=0, le=1000,
                                    description="Signal box and sidebands: momentum at most "
                                    "this.")
    signal_max_tracks: int = Field(default=1, ge=1, le=255,
                                   description="Signal box and sidebands: at most this many "
                                   "spectrometer tracks in the gate (1: a single track).")
    trigger_ecal_max_gev: float = Field(
        default=ECAL_MAX_GEV, gt=0, le=1000,
        description="The physics trigger's E_ECAL cut (trigger.config.ECAL_MAX_GEV): the upper "
        "E_ECAL edge of sideband C and of the dimuon selection.")
    dimuon_module_min_gev: float = Field(default=3.0, ge=0, le=100,
                                         description="Dimuon: an HCAL module with two MIPs "
                                         "(2 x ~2 GeV) sees at least this.")
    dimuon_module_max_gev: float = Field(default=6.0, gt=0, le=100,
                                         description="Dimuon: and at most this (no shower).")
    dimuon_min_modules: int = Field(default=2, ge=1, le=16,
                                    description="Dimuon: HCAL modules in that range, at least.")
    blind: bool = Field(default=True,
                        description="Blind analysis: withhold the signal box count (None in "
                        "summaries, no metric, the box's bins masked on the shift page).")
    confidence: float = Field(default=0.6827, gt=0, lt=1,
                              description="Confidence level of the reported intervals.")
    ecal_bins: int = Field(default=120, ge=4, le=2000, description="Bins of the E_ECAL spectrum.")
    hcal_bins: int = Field(default=120, ge=4, le=2000, description="Bins of the E_HCAL spectrum.")
    plane_bins: int = Field(default=60, ge=4, le=500,
                            description="Bins per axis of the E_ECAL-E_HCAL plane.")
    spectrum_max_ratio: float = Field(default=1.5, gt=0, le=10,
                                      description="Spectra extend to this x beam energy.")
    calib_reference: float = Field(default=1.0, gt=0.5, lt=1.5,
                                   description="Peak of E_ECAL / beam energy of calibration "
                                   "electrons with the nominal calibration (the scale's 1.0).")
    calib_min_events: int = Field(default=100, ge=2, le=10**9,
                                  description="Calibration events (inside the peak's window) "
                                  "a spill needs for an energy scale.")
    calib_cell_reference: dict[str, float] = Field(
        default_factory=dict, max_length=1000,
        description="Mean energy (GeV) per ECAL cell of the calibration events with the "
        "nominal gains, e.g. a reference run's `ecal_cells` means (analyze --json): each "
        "cell's scale is its mean over this. Empty: cell energies without scales.")
    max_open_spills: int = Field(default=4, ge=1, le=1000,
                                 description="A spill still open when this many later spills "
                                 "have closed is closed as incomplete (lost messages).")
    alarms: AlarmConfig = Field(default=AlarmConfig(), description="Alarm bands.")

    @model_validator(mode="after")
    def _cells(self) -> MonitorConfig:
        for cell, mean in self.calib_cell_reference.items():
            if cell not in ecal_cells():
                raise ValueError(f"calib_cell_reference: {cell!r} is not an ECAL cell")
            if not (math.isfinite(mean) and mean > 0):
                raise ValueError(f"calib_cell_reference[{cell!r}] = {mean} must be above 0")
        return self

    @model_validator(mode="after")
    def _srd_range(self) -> MonitorConfig:
        if self.srd_min_gev >= self.srd_max_gev:
            raise ValueError(f"srd_min_gev {self.srd_min_gev} must be below srd_max_gev "
                             f"{self.srd_max_gev}")
        for lo, hi in (("signal_p_min_gev", "signal_p_max_gev"),
                       ("signal_ecal_max_gev", "trigger_ecal_max_gev"),
                       ("dimuon_module_min_gev", "dimuon_module_max_gev")):
            if getattr(self, lo) >= getattr(self, hi):
                raise ValueError(f"{lo} {getattr(self, lo)} must be below {hi} "
                                 f"{getattr(self, hi)}")
        return self


def load_config(path: str | Path | None = None) -> MonitorConfig:
    """A MonitorConfig from a TOML or JSON file (None: the defaults); ConfigError if invalid."""
    if path is None:
        return MonitorConfig()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("path", str(p), f"cannot be read ({e.strerror})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("path", str(p), f"is not valid {p.suffix or 'TOML'} ({e})") from None
    return MonitorConfig.parse(data)
