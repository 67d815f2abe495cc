"""The trigger configuration: one validated model of thresholds, prescales, enabled types, masks.

A configuration is identified by its content hash (`TriggerConfig.content_hash()`); the
builder stamps the active one into every built slice (docs/dataflow.md), so a change made
during a run applies at a spill boundary for every worker and is reproduced by a replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from daq.config import StrictModel
from daq.errors import ConfigError
from daq.geometry import Geometry

#: Trigger bits, as in docs/dataflow.md. An event is kept when any enabled bit fires.
PHYSICS = 1
BEAM = 2
RANDOM = 4
CALIBRATION = 8

#: E_PS threshold (GeV) of the physics trigger, and the monitors' default for their
#: electron tag and signal box: one cut, so the box keeps what the trigger kept (issue 19).
#: 5 MIP: a MIP leaves ~0.02 GeV in the preshower; higher cuts lose low-energy signal.
PS_MIN_GEV = 0.1
#: E_ECAL threshold (GeV) of the physics (missing-energy) trigger, and the monitors' upper
#: E_ECAL edge of sideband C and of the dimuon selection: the physics sample ends there.
ECAL_MAX_GEV = 90.0

TriggerType = Literal["physics", "beam", "random", "calibration"]

#: Trigger type name -> bit.
TRIGGER_BITS: dict[str, int] = {
    "physics": PHYSICS,
    "beam": BEAM,
    "random": RANDOM,
    "calibration": CALIBRATION,
}

ChannelName = Annotated[
    str, Field(min_length=3, max_length=65, pattern=r"^[A-Za-z0-9_]+/[A-Za-z0-9_]+$")
]

BoardName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]

_MAX_PRESCALE = 1 << 24
_LIST_FIELDS = frozenset({"enabled", "masked_channels", "timed_boards"})


class TriggerConfig(StrictModel):
    """Thresholds, prescales, enabled trigger types and masked channels of the trigger.

    `TriggerConfig()` is the valid default. Energies are in GeV, beam counters in MIP
    (their calibration gain is ADC counts per MIP), pulse thresholds in ADC counts above
    pedestal.
    """

    version: int = Field(default=1, ge=0, le=2**31 - 1,
                         description="Human-facing version number, set by whoever edits it.")
    ecal_max_gev: float = Field(default=ECAL_MAX_GEV, gt=0.0, le=1000.0,
                                description="Physics trigger: E_ECAL must be below this, GeV.")
    ps_min_gev: float = Field(default=PS_MIN_GEV, ge=0.0, le=100.0,
                              description="Physics trigger: E_PS must be at least this, GeV.")
    s_min_mip: float = Field(default=0.5, gt=0.0, le=100.0,
                             description="Beam condition: S1, S2, S3 amplitude at least this, MIP.")
    v1_max_mip: float = Field(default=0.5, gt=0.0, le=100.0,
                              description="Beam condition: V1 vetoes at or above this, MIP.")
    pulse_threshold_adc: float = Field(
        default=30.0, gt=0.0, le=4096.0,
        description="A local maximum this far above pedestal (ADC) counts as a pulse.")
    zero_threshold_adc: float = Field(
        default=10.0, ge=0.0, le=4096.0,
        description="Channel amplitudes below this (ADC) count as zero energy (noise).")
    prescale_beam: int = Field(default=1000, ge=1, le=_MAX_PRESCALE,
                               description="Keep 1 in N events meeting the beam condition.")
    prescale_random: int = Field(default=10000, ge=1, le=_MAX_PRESCALE,
                                 description="Keep 1 in N events at random (beam-independent).")
    prescale_calibration: int = Field(
        default=100, ge=1, le=_MAX_PRESCALE,
        description="Keep 1 in N events meeting the calibration condition.")
    calib_ecal_min_gev: float = Field(
        default=80.0, ge=0.0, le=1000.0,
        description="Calibration condition: beam condition and E_ECAL at least this, GeV.")
    calib_ecal_max_gev: float = Field(
        default=120.0, gt=0.0, le=1000.0,
        description="Calibration condition: E_ECAL below this, GeV.")
    enabled: tuple[TriggerType, ...] = Field(
        default=("physics", "beam", "random", "calibration"), max_length=4,
        description="Trigger types whose bits may fire (the others are masked).")
    masked_channels: tuple[ChannelName, ...] = Field(
        default=(), max_length=512,
        description="Channels excluded from energy sums and conditions, as 'BOARD/CHANNEL'.")
    timed_boards: tuple[BoardName, ...] = Field(
        default=(), max_length=32,
        description="Boards timed by their pulse: a channel adds to the energy sums only "
        "when a pulse (from zero_threshold_adc) peaks in its reconstruction window.")

    @model_validator(mode="after")
    def _check(self) -> TriggerConfig:
        if self.calib_ecal_min_gev >= self.calib_ecal_max_gev:
            raise ValueError(
                f"calib_ecal_min_gev ({self.calib_ecal_min_gev}) must be below "
                f"calib_ecal_max_gev ({self.calib_ecal_max_gev})")
        if len(set(self.enabled)) != len(self.enabled):
            raise ValueError(f"enabled lists a type twice: {list(self.enabled)}")
        if len(set(self.masked_channels)) != len(self.masked_channels):
            raise ValueError("masked_channels lists a channel twice")
        if len(set(self.timed_boards)) != len(self.timed_boards):
            raise ValueError("timed_boards lists a board twice")
        return self

    @property
    def enabled_mask(self) -> int:
        """OR of the bits of the enabled trigger types."""
        mask = 0
        for t in self.enabled:
            mask |= TRIGGER_BITS[t]
        return mask

    def check_geometry(self, geometry: Geometry) -> TriggerConfig:
        """Raise ConfigError unless every masked channel and timed board exists in
        `geometry`; return self."""
        for name in self.masked_channels:
            board, _, ch = name.partition("/")
            if board not in geometry.board_names:
                raise ConfigError("masked_channels", name,
                                  f"no board {board!r}; boards are {geometry.board_names}")
            if ch not in {c.name for c in geometry.board(board).channels}:
                raise ConfigError("masked_channels", name, f"board {board} has no channel {ch!r}")
        for board in self.timed_boards:
            if board not in geometry.board_names:
                raise ConfigError("timed_boards", board,
                                  f"no board {board!r}; boards are {geometry.board_names}")
        return self

    def masked(self, board: str) -> set[str]:
        """Names of the masked channels of one board."""
        prefix = board + "/"
        return {n[len(prefix):] for n in self.masked_channels if n.startswith(prefix)}


def parse_config(data: Mapping[str, Any] | None, geometry: Geometry | None = None) -> TriggerConfig:
    """Validate a configuration mapping (None: the default), checked against `geometry`."""
    cfg = TriggerConfig.parse(dict(data) if data is not None else {})
    return cfg.check_geometry(geometry) if geometry is not None else cfg


def _override_value(key: str, text: str) -> Any:
    if key in _LIST_FIELDS:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return json.loads(stripped)
            except json.JSONDecodeError:
                raise ConfigError(key, text, "a JSON list or comma-separated names") from None
        return [p.strip() for p in stripped.split(",") if p.strip()]
    # pydantic's lax mode turns numeric strings into int/float and checks the bounds
    return text.strip()


def apply_overrides(cfg: TriggerConfig, overrides: Iterable[str], *,
                    geometry: Geometry | None = None, bump_version: bool = False) -> TriggerConfig:
    """A new validated config: `cfg` with `KEY=VALUE` strings (e.g. from a CLI) applied.

    List fields take comma-separated names (`enabled=physics,beam`, `masked_channels=`
    for none) or a JSON list. `bump_version` adds one to the version unless an override
    sets it. Raises ConfigError naming the key, the value and what is allowed.
    """
    data = cfg.model_dump(mode="json")
    touched: set[str] = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError("override", item, "must be KEY=VALUE")
        if key not in TriggerConfig.model_fields:
            known = sorted(TriggerConfig.model_fields)
            raise ConfigError(key, text, f"unknown field; known: {known}")
        data[key] = _override_value(key, text)
        touched.add(key)
    if bump_version and "version" not in touched:
        data["version"] = cfg.version + 1
    return parse_config(data, geometry)
