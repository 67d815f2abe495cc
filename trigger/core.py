"""The trigger's pure core: built slice in, features and trigger decision out (no I/O).

`TriggerParams` resolves one configuration against the geometry and calibration into the
flat arrays the kernels take; `compute_features` and `decide` run the kernels of a backend
(`trigger.kernels`, compiled, or `trigger.reference`, NumPy) over one built slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from daq.geometry import Calibration, Geometry
from trigger import kernels
from trigger.config import TriggerConfig
from trigger.errors import SliceError

#: Energy-sum groups: index in the (count, N_GROUPS) accumulator.
GROUPS = {("ECAL", "PS"): 0, ("ECAL", "MAIN"): 1, ("HCAL", "HCAL1"): 2, ("HCAL", "HCAL2"): 3,
          ("HCAL", "HCAL3"): 4, ("HCAL", "HCAL4"): 5, ("VETO", "VETO"): 6, ("SRD", "SRD"): 7}
N_GROUPS = 8
MODES = ("waveform", "feature")
_NO_EXTRA = np.zeros((0, 0), np.float32)  # wave_board's peak time and integral, not wanted
#: Boards whose pulse counts the trigger uses (the beam multiplicity). In waveform mode the
#: pulse search, a third of the kernel's time, runs only for them; other boards' npulse is 0.
PULSE_BOARDS = frozenset({"BEAM"})


@dataclass(frozen=True)
class BoardParams:
    """Per-channel arrays of one board under one configuration."""

    name: str
    nch: int
    live: np.ndarray  # uint8: 0 for masked channels
    group: np.ndarray  # int64: energy-sum group, -1 for none or masked
    weight: np.ndarray  # float64: 1 / gain (GeV or MIP per ADC count)
    sat_limit: np.ndarray  # float64: feature-mode amplitude that means saturation


@dataclass(frozen=True)
class TriggerParams:
    """One configuration resolved against a geometry and calibration, ready for the kernels."""

    config: TriggerConfig
    cfg_hash: str
    boards: tuple[BoardParams, ...]
    n_ped: int
    adc_max: int
    trigger_sample: int
    sample_ns: float
    samples: int
    s_idx: np.ndarray
    v_idx: np.ndarray
    fpar: np.ndarray
    ipar: np.ndarray

    @property
    def feature_key(self) -> tuple[object, ...]:
        """What the features depend on; two params with equal keys share features."""
        c = self.config
        return (c.pulse_threshold_adc, c.zero_threshold_adc, c.masked_channels)


def build_params(cfg: TriggerConfig, geometry: Geometry, calib: Calibration) -> TriggerParams:
    """Resolve `cfg` (already validated against `geometry`) into kernel arrays."""
    det = geometry.detector
    boards = []
    for b in geometry.boards:
        masked = cfg.masked(b.name)
        live = np.array([c.name not in masked for c in b.channels], np.uint8)
        group = np.array([GROUPS.get((b.name, c.group), -1) if live[i] else -1
                          for i, c in enumerate(b.channels)], np.int64)
        weight = 1.0 / calib.gain[b.name].astype(np.float64)
        limit = np.where(live != 0, det.adc_max - calib.pedestal[b.name].astype(np.float64),
                         np.inf)
        boards.append(BoardParams(b.name, len(b.channels), live, group, weight, limit))
    s_idx = v_idx = np.zeros(0, np.int64)
    if "BEAM" in geometry.board_names:
        beam = geometry.board("BEAM")
        masked = cfg.masked("BEAM")
        s_idx = np.array([i for i, c in enumerate(beam.channels)
                          if c.group == "S" and c.name not in masked], np.int64)
        v_idx = np.array([i for i, c in enumerate(beam.channels)
                          if c.group == "V" and c.name not in masked], np.int64)
    fpar = np.array([cfg.s_min_mip, cfg.v1_max_mip, cfg.ps_min_gev, cfg.ecal_max_gev,
                     cfg.calib_ecal_min_gev, cfg.calib_ecal_max_gev], np.float64)
    ipar = np.array([cfg.prescale_beam, cfg.prescale_random, cfg.prescale_calibration,
                     cfg.enabled_mask], np.int64)
    return TriggerParams(
        config=cfg, cfg_hash=cfg.content_hash(), boards=tuple(boards),
        n_ped=max(1, det.trigger_sample // 2), adc_max=det.adc_max,
        trigger_sample=det.trigger_sample, sample_ns=det.sample_ns, samples=det.samples,
        s_idx=s_idx, v_idx=v_idx, fpar=fpar, ipar=ipar)


@dataclass
class Features:
    """Per-event features of one built slice (docs/dataflow.md, `features`)."""

    count: int
    sums: np.ndarray  # float64 (count, N_GROUPS)
    mult: np.ndarray  # uint8
    sat: np.ndarray  # uint8, bit i: board i saturated
    amp: dict[str, np.ndarray] = field(default_factory=dict)  # float32 (count, nch) per board
    #: uint8 (count, nch) per board; in waveform mode counted only for PULSE_BOARDS (else 0)
    npulse: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def e_ecal(self) -> np.ndarray:
        return self.sums[:, 0] + self.sums[:, 1]

    @property
    def e_ps(self) -> np.ndarray:
        return self.sums[:, 0]

    def arrays(self) -> dict[str, np.ndarray]:
        """The feature arrays of the wire contract (without ts, missing and bits)."""
        s = self.sums
        return {"e_ecal": self.e_ecal.astype(np.float32), "e_ps": s[:, 0].astype(np.float32),
                "e_hcal": np.ascontiguousarray(s[:, 2:6], np.float32),
                "e_veto": s[:, 6].astype(np.float32), "e_srd": s[:, 7].astype(np.float32),
                "mult": self.mult, "sat": self.sat}


def _need(arrays: Mapping[str, np.ndarray], name: str, dtype: str,
          shape: tuple[int, ...]) -> np.ndarray | None:
    a = arrays.get(name)
    if a is None:
        return None
    if a.dtype != np.dtype(dtype) or a.shape != shape:
        raise SliceError("shape", f"{name} is {a.dtype}{a.shape}, expected {dtype}{shape}")
    return a


def board_amplitudes(arrays: Mapping[str, np.ndarray], count: int, mode: str,
                     p: TriggerParams, backend: ModuleType = kernels
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """amp and npulse per board, and the saturation bits, from a built slice's arrays.

    A board whose arrays are absent (zero-suppressed) reads zero in every channel.
    """
    if mode not in MODES:
        raise SliceError("mode", f"mode {mode!r}, expected one of {MODES}")
    amp: dict[str, np.ndarray] = {}
    npulse: dict[str, np.ndarray] = {}
    sat = np.zeros(count, np.uint8)
    bsat = np.empty(count, np.uint8)
    for i, b in enumerate(p.boards):
        shape = (count, b.nch)
        if mode == "waveform":
            wave = _need(arrays, f"{b.name}.wave", "<i2", (count, p.samples, b.nch))
            if wave is None:
                amp[b.name], npulse[b.name] = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
                continue
            a, n = np.empty(shape, np.float32), np.empty(shape, np.uint8)
            backend.wave_board(wave, b.live, p.n_ped, p.config.pulse_threshold_adc, p.adc_max,
                               p.trigger_sample, p.sample_ns, False, b.name in PULSE_BOARDS, a,
                               _NO_EXTRA, n, _NO_EXTRA, bsat)
        else:
            a_in = _need(arrays, f"{b.name}.amp", "<f4", shape)
            n_in = _need(arrays, f"{b.name}.npulse", "|u1", shape)
            if a_in is None:
                amp[b.name], npulse[b.name] = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
                continue
            a = a_in
            n = n_in if n_in is not None else np.zeros(shape, np.uint8)
            backend.feature_sat(a, b.sat_limit, bsat)
        amp[b.name], npulse[b.name] = a, n
        sat |= bsat << np.uint8(i)
    return amp, npulse, sat


def compute_features(arrays: Mapping[str, np.ndarray], count: int, mode: str, p: TriggerParams,
                     backend: ModuleType = kernels) -> Features:
    """Calibrated energies, multiplicity and saturation of every event of a built slice."""
    amp, npulse, sat = board_amplitudes(arrays, count, mode, p, backend)
    return sums_from_amplitudes(amp, npulse, sat, count, p, backend)


def sums_from_amplitudes(amp: dict[str, np.ndarray], npulse: dict[str, np.ndarray],
                         sat: np.ndarray, count: int, p: TriggerParams,
                         backend: ModuleType = kernels) -> Features:
    """Energy sums and beam multiplicity from per-board amplitudes (config-dependent part)."""
    sums = np.zeros((count, N_GROUPS), np.float64)
    for b in p.boards:
        backend.accumulate(amp[b.name], b.weight, b.group, p.config.zero_threshold_adc, sums)
    mult = np.ones(count, np.uint8)
    if "BEAM" in amp:
        bp = next(b for b in p.boards if b.name == "BEAM")
        backend.multiplicity(amp["BEAM"], npulse["BEAM"], bp.weight, p.s_idx, mult)
    return Features(count, sums, mult, sat, amp, npulse)


def decide(f: Features, p: TriggerParams, *, run: int, spill: int, first: int,
           backend: ModuleType = kernels) -> tuple[np.ndarray, np.ndarray]:
    """(cond, bits) of every event: conditions met, and bits fired after prescale and mask."""
    cond = np.empty(f.count, np.uint8)
    bits = np.empty(f.count, np.uint8)
    if "BEAM" in f.amp:
        beam_amp = f.amp["BEAM"]
        beam_w = next(b for b in p.boards if b.name == "BEAM").weight
    else:
        beam_amp, beam_w = np.zeros((f.count, 0), np.float32), np.zeros(0, np.float64)
    backend.decide(beam_amp, beam_w, p.s_idx, p.v_idx, f.e_ecal, f.e_ps, run, spill, first,
                   p.fpar, p.ipar, cond, bits)
    return cond, bits


def warm_up(geometry: Geometry, calibration: Calibration) -> None:
    """Compile (or load from the cache) every kernel specialisation a worker will use.

    Arrays decoded from the wire are read-only, which numba types separately from writable
    ones, so both are exercised, in both readout modes.
    """
    from trigger.config import TriggerConfig  # the default config is valid for any geometry

    p = build_params(TriggerConfig(), geometry, calibration)
    for readonly in (False, True):
        for mode in MODES:
            arrays: dict[str, np.ndarray] = {}
            for b in p.boards:
                if mode == "waveform":
                    arrays[f"{b.name}.wave"] = np.full((2, p.samples, b.nch), 400, np.int16)
                else:
                    arrays[f"{b.name}.amp"] = np.zeros((2, b.nch), np.float32)
                    arrays[f"{b.name}.npulse"] = np.zeros((2, b.nch), np.uint8)
            for a in arrays.values():
                a.flags.writeable = not readonly
            decide(compute_features(arrays, 2, mode, p), p, run=0, spill=0, first=0)
