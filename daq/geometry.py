"""Detector geometry and per-channel calibration, loaded from TOML into validated models."""

from __future__ import annotations

import functools
import tomllib
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from daq.config import StrictModel, content_hash
from daq.errors import ConfigError

BOARD_NAMES = ("BEAM", "SRD", "ECAL", "VETO", "HCAL")

Name = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_]+$")]


class Channel(StrictModel):
    name: Name = Field(description="Channel name, unique within its board.")
    group: Name = Field(description="Functional group (S, V, SRD, PS, MAIN, VETO, HCAL1..4).")
    x: int | None = Field(default=None, ge=0, le=63, description="Column index, if on a grid.")
    y: int | None = Field(default=None, ge=0, le=63, description="Row index, if on a grid.")


class Board(StrictModel):
    name: Name = Field(description="Board name (BEAM, SRD, ECAL, VETO, HCAL or custom).")
    window_ns: float = Field(
        gt=0, le=400, description="Reconstruction time window around the in-time peak, ns "
        "(the samples of reco_window).")
    pulse_tp_ns: float = Field(
        default=20.0, gt=0, le=200,
        description="Peaking time of the board's CR-RC^2 pulse (start to peak), ns.")
    channels: list[Channel] = Field(min_length=1, max_length=512, description="Wire order.")

    @model_validator(mode="after")
    def _unique(self) -> Board:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate channel names {dup}")
        return self

    def indices(self, group: str) -> np.ndarray:
        """Channel indices (wire order) of one group, as an int64 array."""
        return np.array([i for i, c in enumerate(self.channels) if c.group == group], np.int64)


#: points of `peak_correction` over s in [-1, 1]
PEAK_TABLE = 257


def pulse_shape(dt_from_peak: np.ndarray, tp_ns: float) -> np.ndarray:
    """CR-RC^2 pulse of peak 1: f = (x/tp)^2 exp(2 (1 - x/tp)) at x = dt + tp > 0, else 0."""
    x = np.asarray(dt_from_peak, np.float64) / tp_ns + 1.0
    return np.where(x > 0, np.maximum(x, 0) ** 2 * np.exp(2 * (1 - x)), 0.0)


@functools.cache
def peak_correction(tp_ns: float, sample_ns: float, n: int = PEAK_TABLE) -> np.ndarray:
    """Peak over largest sample of a CR-RC^2 pulse, tabulated against the sample ratio
    s = (y[i+1] - y[i-1]) / y[i] around the largest sample y[i], at s = -1 + 2k / (n - 1).

    The ratio fixes where the peak lies between the samples (the beam is asynchronous to the
    sampling clock), and with it the factor from the largest sample to the peak: a fit of
    the known pulse shape by its phase, in one lookup (decision 0003, "Beam phase"). Ratios
    that no phase gives (noise) take the factor of the nearest one that a phase gives.
    """
    phase = (np.arange(20000) + 0.5) / 20000 * sample_ns  # peak after a sample by this
    k = np.arange(-2, 3)
    y = pulse_shape(k[None, :] * sample_ns - phase[:, None], tp_ns)
    i = np.argmax(y, axis=1)
    rows = np.arange(len(phase))
    y0 = y[rows, i]
    ratio = (y[rows, i + 1] - y[rows, i - 1]) / y0
    order = np.argsort(ratio, kind="stable")
    grid = np.linspace(-1.0, 1.0, n)
    table = np.interp(grid, ratio[order], 1.0 / y0[order])
    table.setflags(write=False)  # cached: shared by every caller
    return table


class DetectorInfo(StrictModel):
    name: str = Field(min_length=1, max_length=64, description="Geometry name.")
    samples: int = Field(ge=4, le=1024, description="Samples per waveform.")
    sample_ns: float = Field(gt=0, le=1000, description="Sampling period in ns.")
    adc_max: int = Field(ge=255, le=65535, description="Largest ADC value (saturation).")
    pedestal: float = Field(ge=0, le=65535, description="Nominal pedestal, ADC counts.")
    noise: float = Field(ge=0, le=1000, description="Pedestal noise RMS, ADC counts.")
    trigger_sample: int = Field(ge=0, le=1023, description="Sample where in-time pulses peak.")


def reco_window(board: Board, det: DetectorInfo) -> tuple[int, int]:
    """Samples [first, last) of `board`'s reconstruction window: the round(window_ns /
    sample_ns) samples (at least one) around the trigger sample, where an in-time pulse
    peaks (a fraction of a sample after it: the beam phase), one more after it than before
    it when the count is even. Both readout modes take a channel's amplitude and pulse count
    from these samples only (decision 0003, "Pileup"): a pulse that peaks outside them adds
    at most its tail. Clipped to the trace."""
    n = max(1, round(board.window_ns / det.sample_ns))
    first = det.trigger_sample - (n - 1) // 2
    return max(0, first), min(det.samples, first + n)


class Geometry(StrictModel):
    detector: DetectorInfo = Field(description="Digitiser and detector-wide constants.")
    boards: list[Board] = Field(min_length=1, max_length=32, description="Boards, in order.")

    @model_validator(mode="after")
    def _check(self) -> Geometry:
        names = [b.name for b in self.boards]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate board names {names}")
        if self.detector.trigger_sample >= self.detector.samples:
            raise ValueError("detector.trigger_sample must be below detector.samples")
        return self

    def board(self, name: str) -> Board:
        for b in self.boards:
            if b.name == name:
                return b
        raise ConfigError("board", name, f"one of {[b.name for b in self.boards]}")

    @cached_property
    def hash(self) -> str:
        return self.content_hash()

    @property
    def board_names(self) -> list[str]:
        return [b.name for b in self.boards]

    def n_channels(self, board: str) -> int:
        return len(self.board(board).channels)


def _read_toml(path: Path | None, default: str) -> tuple[dict, str]:
    try:
        if path is None:
            text = resources.files("daq").joinpath(default).read_text()
            where = f"<package>/{default}"
        else:
            text = Path(path).read_text()
            where = str(path)
        return tomllib.loads(text), where
    except OSError as e:
        raise ConfigError("path", str(path), f"cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("path", str(path or default), f"is not valid TOML ({e})") from None


def load_geometry(path: str | Path | None = None) -> Geometry:
    """Load a geometry TOML (default: the one shipped in the package)."""
    data, where = _read_toml(Path(path) if path else None, "geometry.toml")
    try:
        return Geometry.parse(data)
    except ConfigError as e:
        raise ConfigError(e.field, e.value, f"{e.bound} (in {where})") from None


class Calibration:
    """Resolved per-channel pedestals and gains for one geometry, identified by content hash.

    `pedestal[board]` and `gain[board]` are float32 arrays in the board's wire channel order.
    """

    def __init__(self, geometry: Geometry, table: dict, version: str) -> None:
        self.geometry = geometry
        self.version = version
        self.pedestal: dict[str, np.ndarray] = {}
        self.gain: dict[str, np.ndarray] = {}
        resolved: dict[str, list[list[float]]] = {}
        for b in geometry.boards:
            ped, gain = [], []
            for c in b.channels:
                entry = _resolve(table, b.name, c, geometry.detector.pedestal)
                ped.append(entry["pedestal"])
                gain.append(entry["gain"])
            self.pedestal[b.name] = np.asarray(ped, np.float32)
            self.gain[b.name] = np.asarray(gain, np.float32)
            resolved[b.name] = [ped, gain]
        self.hash = content_hash({"geometry": geometry.hash, "channels": resolved})

    def to_dict(self) -> dict:
        """The resolved table, for a run's configuration snapshot."""
        return {"version": self.version, "hash": self.hash,
                "pedestal": {b: v.tolist() for b, v in self.pedestal.items()},
                "gain": {b: v.tolist() for b, v in self.gain.items()}}


def _resolve(table: dict, board: str, ch: Channel, nominal_ped: float) -> dict[str, float]:
    out = {"pedestal": nominal_ped, "gain": 1.0}
    for section, key in (("default", None), ("boards", board), ("groups", f"{board}/{ch.group}"),
                         ("channels", f"{board}/{ch.name}")):
        src = table.get(section, {})
        entry = src if key is None else src.get(key, {})
        for k, v in entry.items():
            where = f"{section}.{key}.{k}" if key else f"{section}.{k}"
            if k not in out:
                raise ConfigError(where, v, "known keys are pedestal and gain")
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise ConfigError(where, v, "must be a number")
            if k == "gain" and not 1e-3 <= v <= 1e7:
                raise ConfigError(where, v, "gain must be within [1e-3, 1e7] ADC/GeV")
            if k == "pedestal" and not 0 <= v <= 65535:
                raise ConfigError(where, v, "pedestal must be within [0, 65535]")
            out[k] = float(v)
    return out


def load_calibration(geometry: Geometry, path: str | Path | None = None) -> Calibration:
    """Load a calibration TOML (default: the one shipped in the package) for `geometry`."""
    data, _ = _read_toml(Path(path) if path else None, "calibration.toml")
    allowed = {"version", "default", "boards", "groups", "channels"}
    for k in data:
        if k not in allowed:
            raise ConfigError(k, data[k], f"unknown section; allowed {sorted(allowed)}")
    boards = set(geometry.board_names)
    for key in data.get("boards", {}):
        if key not in boards:
            raise ConfigError(f"boards.{key}", key, f"no such board; have {sorted(boards)}")
    for sec in ("groups", "channels"):
        for key in data.get(sec, {}):
            b, _, rest = key.partition("/")
            if b not in boards or not rest:
                raise ConfigError(f"{sec}.{key}", key, "must be 'BOARD/NAME' for a known board")
            names = {c.group if sec == "groups" else c.name for c in geometry.board(b).channels}
            if rest not in names:
                raise ConfigError(f"{sec}.{key}", key, f"board {b} has no {sec[:-1]} {rest!r}")
    return Calibration(geometry, data, str(data.get("version", "unversioned")))
