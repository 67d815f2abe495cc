"""Validated configuration of the beam and detector simulator and of its fault injection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from daq.config import StrictModel
from daq.geometry import BOARD_NAMES

Mode = Literal["waveform", "feature"]
Pace = Literal["realtime", "max", "factor"]


class SimConfig(StrictModel):
    """Beam, rare processes and readout of one simulated run."""

    intensity: float = Field(6e6, ge=1.0, le=1e8, description="Beam particles per spill.")
    spill_length_s: float = Field(4.8, gt=0, le=60, description="Spill (extraction) length, s.")
    spill_period_s: float = Field(16.8, gt=0, le=600,
                                  description="Time from one spill start to the next, s.")
    generated_s: float | None = Field(
        None, gt=0, le=60,
        description="Seconds of each spill generated at the full rate (None: whole spill). "
        "Short values keep pileup right while keeping events few.")
    beam_energy_gev: float = Field(100.0, ge=1, le=400, description="Nominal beam energy, GeV.")
    momentum_spread: float = Field(0.01, ge=0, le=0.2, description="Relative momentum RMS.")
    tracker_resolution: float = Field(
        0.01, ge=0, le=0.2,
        description="The spectrometer's relative momentum resolution sigma_p / p (Gaussian).")
    hadron_fraction: float = Field(1e-2, ge=0, le=0.5, description="Hadrons per beam particle.")
    hadron_leading_neutral: float = Field(
        1e-3, ge=0, le=1,
        description="Hadrons interacting in the ECAL whose leading neutral (K0L, n) takes "
        "50-99 % of the energy and escapes ECAL and HCAL, per interacting hadron.")
    muon_fraction: float = Field(2e-3, ge=0, le=0.5, description="Muons per beam particle.")
    upstream_loss_rate: float = Field(
        1e-3, ge=0, le=0.5, description="Electrons losing energy upstream, per electron.")
    dimuon_rate: float = Field(1e-4, ge=0, le=0.5,
                               description="e Z -> e Z mu mu in the ECAL, per electron.")
    signal_rate: float = Field(1e-4, ge=0, le=0.5,
                               description="e Z -> e Z A' (A' invisible), per electron.")
    v1_fraction: float = Field(0.02, ge=0, le=1, description="Particles (halo) that hit V1.")
    halo_rate: float = Field(
        0.47, ge=0, le=1,
        description="Beam-halo muons per beam particle: off-axis, uniform in time (a Poisson "
                    "process at this fraction of the beam rate); each crosses one VETO "
                    "counter and one line of HCAL1-3 cells, nothing else (decision 0003, "
                    "\"Pileup\").")
    slice_events: int = Field(4096, ge=1, le=1 << 20,
                              description="Events per slice (fixed slice boundaries).")
    seed: int = Field(1, ge=0, le=2**63 - 1, description="Seed of every random stream.")
    mode: Mode = Field("feature", description="Readout mode: waveform or feature.")
    zero_suppress: bool = Field(
        False, description="Waveform mode: send only the channels that reach zs_adc "
        "(hit_wave) instead of every channel (wave). Feature mode always suppresses.")
    zs_adc: float = Field(
        6.0, ge=0, le=4096,
        description="Zero-suppression threshold, ADC counts (6: three times the 2-count "
        "noise). Feature mode: rounded amplitude >= zs_adc; waveform mode: largest sample "
        "minus the pedestal estimate >= zs_adc.")
    run: int = Field(1, ge=0, le=2**31, description="Run number stamped on every message.")
    ecal_gain_scale: float = Field(
        1.0, ge=0.5, le=1.5,
        description="True gain of every ECAL channel / the calibration's gain (0.92: an 8 % "
        "gain drop the calibration does not know of).")
    ecal_gain_drift: float = Field(
        0.0, ge=-0.2, le=0.2,
        description="Relative change of the ECAL gain per spill: spill s has its gain times "
        "(1 + drift s), floored at 0.5; on ecal_drift_cell only, else every ECAL channel.")
    ecal_drift_cell: str | None = Field(
        None, min_length=1, max_length=32,
        description="ECAL channel (e.g. MAIN_2_2, the beam spot's) the drift applies to; "
        "None: every ECAL channel.")

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.hadron_fraction + self.muon_fraction >= 1:
            raise ValueError("hadron_fraction + muon_fraction must be below 1")
        if self.upstream_loss_rate + self.dimuon_rate + self.signal_rate >= 1:
            raise ValueError("upstream_loss_rate + dimuon_rate + signal_rate must be below 1")
        if self.generated_s is not None and self.generated_s > self.spill_length_s:
            raise ValueError("generated_s must not exceed spill_length_s")
        if self.spill_period_s < self.spill_length_s:
            raise ValueError("spill_period_s must not be shorter than spill_length_s")
        return self

    def ecal_gain_factor(self, spill: int) -> tuple[float, float]:
        """(every ECAL channel's, ecal_drift_cell's) true gain / calibration gain in `spill`
        (equal when the drift applies to every channel)."""
        drift = max(0.5, 1.0 + self.ecal_gain_drift * spill)
        if self.ecal_drift_cell is None:
            return self.ecal_gain_scale * drift, self.ecal_gain_scale * drift
        return self.ecal_gain_scale, self.ecal_gain_scale * drift

    @property
    def gen_s(self) -> float:
        """Seconds generated per spill."""
        return self.spill_length_s if self.generated_s is None else self.generated_s

    @property
    def suppresses(self) -> bool:
        """Whether the boards send zero-suppressed hits (feature mode, or zero_suppress)."""
        return self.mode == "feature" or self.zero_suppress

    @property
    def rate_hz(self) -> float:
        """Instantaneous particle rate during the spill, Hz."""
        return self.intensity / self.spill_length_s


class FaultConfig(StrictModel):
    """Faults injected into the front-end streams; every one is off by default."""

    stop_board: str | None = Field(None, description="Board that stops sending mid-spill.")
    stop_spill: int = Field(0, ge=0, le=1 << 20, description="Spill in which the board stops.")
    stop_fraction: float = Field(
        0.5, ge=0, le=1, description="Fraction of that spill's slices sent before stopping.")
    empty_board: str | None = Field(None, description="Board sending zero-suppressed fragments.")
    empty_rate: float = Field(0.0, ge=0, le=1,
                              description="Probability that a slice of empty_board is empty.")
    corrupt_rate: float = Field(0.0, ge=0, le=1,
                                description="Probability that a slice has a corrupted array frame.")
    duplicate_rate: float = Field(0.0, ge=0, le=1,
                                  description="Probability that a slice is sent twice.")
    reorder_rate: float = Field(0.0, ge=0, le=1,
                                description="Probability that a slice swaps with the next one.")
    ramp: float = Field(
        0.0, ge=-0.5, le=10,
        description="Intensity change per spill: I_s = I (1 + ramp s), floored at 1%.")
    seed: int = Field(7, ge=0, le=2**63 - 1, description="Seed of the fault choices.")

    @model_validator(mode="after")
    def _boards(self) -> FaultConfig:
        for name in (self.stop_board, self.empty_board):
            if name is not None and name not in BOARD_NAMES:
                raise ValueError(f"board {name!r} is not one of {list(BOARD_NAMES)}")
        return self

    def intensity_factor(self, spill: int) -> float:
        """Multiplier of the nominal intensity in `spill` (the intensity ramp)."""
        return max(0.01, 1.0 + self.ramp * spill)
