"""The trigger's pure core: built slice in, features and trigger decision out (no I/O).

`TriggerParams` resolves one configuration against the geometry and calibration into the
flat arrays the kernels take; `compute_features` and `decide` run the kernels of a backend
(`trigger.kernels`, compiled, or `trigger.reference`, NumPy) over one built slice.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from daq import hits
from daq.errors import WireError
from daq.geometry import Calibration, Geometry, peak_correction, reco_window
from trigger import kernels
from trigger.config import TriggerConfig
from trigger.errors import SliceError

#: Energy-sum groups: index in the (count, N_GROUPS) accumulator.
GROUPS = {("ECAL", "PS"): 0, ("ECAL", "MAIN"): 1, ("HCAL", "HCAL1"): 2, ("HCAL", "HCAL2"): 3,
          ("HCAL", "HCAL3"): 4, ("HCAL", "HCAL4"): 5, ("VETO", "VETO"): 6, ("SRD", "SRD"): 7}
N_GROUPS = 8
MODES = ("waveform", "feature")
_NO_EXTRA = np.zeros((0, 0), np.float32)  # wave_board's peak time and integral, not wanted
#: Boards whose pulse counts the trigger uses (the beam multiplicity), besides the boards the
#: configuration times by their pulse (`TriggerConfig.timed_boards`: a channel adds to the
#: sums only when a pulse peaks in its reconstruction window; decision 0005, "Boards timed
#: by their pulse"). In waveform mode the pulse search, a third of the kernel's time, runs
#: only for these; other boards' npulse is 0.
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
    #: float64: largest sample to pulse peak by the neighbours' ratio (peak_correction)
    corr: np.ndarray
    #: float64: the calibration's pedestal per channel (waveforms; decision 0005, "Pedestal")
    ped: np.ndarray
    #: samples [first, last) of the reconstruction window (daq.geometry.reco_window)
    window: tuple[int, int]
    #: timed by its pulse (TriggerConfig.timed_boards): a channel counts in the sums only
    #: with a pulse in the window
    timed: bool = False

    @property
    def pulses(self) -> bool:
        """Whether its pulses are counted from waveforms."""
        return self.name in PULSE_BOARDS or self.timed


@dataclass(frozen=True)
class TriggerParams:
    """One configuration resolved against a geometry and calibration, ready for the kernels."""

    config: TriggerConfig
    cfg_hash: str
    boards: tuple[BoardParams, ...]
    adc_max: int
    trigger_sample: int
    sample_ns: float
    samples: int
    s_idx: np.ndarray
    v_idx: np.ndarray
    #: the spectrometer's BEAM channels, empty in a geometry without them: momentum (P,
    #: at most one) and track count (TRK)
    p_idx: np.ndarray
    trk_idx: np.ndarray
    fpar: np.ndarray
    ipar: np.ndarray

    @property
    def feature_key(self) -> tuple[object, ...]:
        """What the features depend on; two params with equal keys share features."""
        c = self.config
        return (c.pulse_threshold_adc, c.zero_threshold_adc, c.masked_channels,
                c.timed_boards)


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
        # feature hits are integers capped at the largest integer amplitude below the limit
        top = np.floor(det.adc_max - calib.pedestal[b.name].astype(np.float64))
        limit = np.where(live != 0, top, np.inf)
        corr = peak_correction(b.pulse_tp_ns, det.sample_ns)
        boards.append(BoardParams(b.name, len(b.channels), live, group, weight, limit, corr,
                                  calib.pedestal[b.name].astype(np.float64),
                                  reco_window(b, det), b.name in cfg.timed_boards))
    beam_idx = {g: np.zeros(0, np.int64) for g in ("S", "V", "P", "TRK")}
    if "BEAM" in geometry.board_names:
        beam = geometry.board("BEAM")
        masked = cfg.masked("BEAM")
        beam_idx = {g: np.array([i for i, c in enumerate(beam.channels)
                                 if c.group == g and c.name not in masked], np.int64)
                    for g in beam_idx}
    fpar = np.array([cfg.s_min_mip, cfg.v1_max_mip, cfg.ps_min_gev, cfg.ecal_max_gev,
                     cfg.calib_ecal_min_gev, cfg.calib_ecal_max_gev], np.float64)
    ipar = np.array([cfg.prescale_beam, cfg.prescale_random, cfg.prescale_calibration,
                     cfg.enabled_mask], np.int64)
    return TriggerParams(
        config=cfg, cfg_hash=cfg.content_hash(), boards=tuple(boards),
        adc_max=det.adc_max,
        trigger_sample=det.trigger_sample, sample_ns=det.sample_ns, samples=det.samples,
        s_idx=beam_idx["S"], v_idx=beam_idx["V"], p_idx=beam_idx["P"][:1],
        trk_idx=beam_idx["TRK"], fpar=fpar, ipar=ipar)


@dataclass
class Features:
    """Per-event features of one built slice (docs/dataflow.md, `features`)."""

    count: int
    sums: np.ndarray  # float64 (count, N_GROUPS)
    mult: np.ndarray  # uint8
    sat: np.ndarray  # uint8, bit i: board i saturated
    #: float32 (count, nch of BEAM, 0 without BEAM): amplitudes, 0 below the zero threshold
    beam_amp: np.ndarray
    #: uint8, as beam_amp: pulse counts (0 below the zero threshold)
    beam_npulse: np.ndarray
    #: the spectrometer's `p` (float32, GeV) and `ntrk` (uint8), when the geometry has it
    track: dict[str, np.ndarray] = field(default_factory=dict)

    @functools.cached_property
    def e_ecal(self) -> np.ndarray:
        return self.sums[:, 0] + self.sums[:, 1]

    @property
    def e_ps(self) -> np.ndarray:
        return self.sums[:, 0]

    def arrays(self, backend: ModuleType = kernels) -> dict[str, np.ndarray]:
        """The feature arrays of the wire contract (without ts, missing and bits)."""
        n = self.count
        out = {"e_ecal": np.empty(n, np.float32), "e_ps": np.empty(n, np.float32),
               "e_hcal": np.empty((n, 4), np.float32), "e_veto": np.empty(n, np.float32),
               "e_srd": np.empty(n, np.float32)}
        backend.feature_columns(self.sums, *out.values())
        return {**out, "mult": self.mult, "sat": self.sat, **self.track}


@dataclass(frozen=True)
class BoardAmplitudes:
    """One board's amplitudes in the layout its arrays came in.

    Dense (`nhit is None`): float32 `amp` and uint8 `npulse` of shape (count, nch). Hits:
    shape (nhits,) in hit order, `amp` float32 (waveforms) or int16 (feature mode, as sent).
    From waveforms, `npulse` is counted only for PULSE_BOARDS and timed boards (0 elsewhere).
    """

    amp: np.ndarray
    npulse: np.ndarray
    nhit: np.ndarray | None = None
    ch: np.ndarray | None = None
    #: its energy sums were added in the same pass that read its hits (feature mode)
    summed: bool = False


def _ro(a: np.ndarray) -> np.ndarray:
    # Kernel inputs as one numba type whatever the wire gave (read-only, or writable when the
    # builder padded a short fragment): one compiled specialisation, warmed up at start.
    v = np.ascontiguousarray(a).view()
    v.flags.writeable = False
    return v


def _need(arrays: Mapping[str, np.ndarray], name: str, dtype: str,
          shape: tuple[int, ...]) -> np.ndarray:
    a = arrays[name]
    if a.dtype != np.dtype(dtype) or a.shape != shape:
        raise SliceError("shape", f"{name} is {a.dtype}{a.shape}, expected {dtype}{shape}")
    return _ro(a)


def _present(arrays: Mapping[str, np.ndarray], p: TriggerParams) -> set[str]:
    """Boards with arrays in the slice; an array of a board not in the geometry refuses it."""
    names = {n.partition(".")[0] for n in arrays if "." in n}
    unknown = names - {b.name for b in p.boards}
    if unknown:
        raise SliceError("shape", f"arrays of boards not in the geometry: {sorted(unknown)}")
    return names


def _hits(arrays: Mapping[str, np.ndarray], b: BoardParams, count: int,
          spec: Mapping[str, np.dtype], samples: int,
          backend: ModuleType) -> dict[str, np.ndarray]:
    try:
        hits.check(arrays, count, b.nch, spec, prefix=f"{b.name}.", samples=samples)
    except WireError as e:
        raise SliceError("shape", e.detail) from None
    h = {k: _ro(arrays[f"{b.name}.{k}"]) for k in ("nhit", *spec)}
    # the sums add in channel order and a repeated channel would count twice: checked here,
    # in a compiled pass, rather than by the builder (numpy would cost it ~0.1 us/event);
    # feature hits get it from feature_hits' pass
    if "hit_amp" not in spec:
        _order(b, h, backend.hit_order(h["nhit"], h["hit_ch"]))
    return h


def _order(b: BoardParams, h: Mapping[str, np.ndarray], bad: int) -> None:
    if bad >= 0:
        raise SliceError("shape", f"{b.name}.hit_ch: hit {bad} (channel "
                                  f"{int(h['hit_ch'][bad])}) is not above the previous "
                                  "channel of its event")


def board_amplitudes(arrays: Mapping[str, np.ndarray], count: int, mode: str,
                     p: TriggerParams, backend: ModuleType = kernels, *,
                     sums: np.ndarray | None = None
                     ) -> tuple[dict[str, BoardAmplitudes], np.ndarray]:
    """Amplitudes of every board that sent arrays, and the saturation bits, of a built slice.

    Each board is taken in its own layout (docs/dataflow.md, "Built slice"): full
    waveforms `B.wave`, zero-suppressed waveforms `B.nhit`/`B.hit_ch`/`B.hit_wave`, or
    feature hits (`B.hit_amp`, `B.hit_np`). A board without arrays read nothing.
    Feature hits are read once: their energy sums are added to `sums` (float64
    (count, N_GROUPS), zeros when not given) in that pass, and the board marked `summed`;
    a timed board's sums wait for its pulse check (`sums_from_amplitudes`).
    """
    if sums is None:
        sums = np.zeros((count, N_GROUPS), np.float64)
    if mode not in MODES:
        raise SliceError("mode", f"mode {mode!r}, expected one of {MODES}")
    present = _present(arrays, p)
    out: dict[str, BoardAmplitudes] = {}
    sat = np.zeros(count, np.uint8)
    bsat = np.empty(count, np.uint8)
    for i, b in enumerate(p.boards):
        if b.name not in present:
            continue
        if mode == "waveform" and f"{b.name}.wave" in arrays:
            out[b.name] = _full_waveforms(arrays, count, b, p, backend, bsat)
        elif mode == "waveform":
            out[b.name] = _waveform_hits(arrays, count, b, p, backend, bsat)
        else:
            h = _hits(arrays, b, count, hits.FEATURE_HITS, p.samples, backend)
            group = np.full(b.nch, -1, np.int64) if b.timed else b.group
            _order(b, h, backend.feature_hits(h["nhit"], h["hit_ch"], h["hit_amp"],
                                              b.sat_limit, b.weight, group,
                                              p.config.zero_threshold_adc, bsat, sums))
            out[b.name] = BoardAmplitudes(h["hit_amp"], h["hit_np"], h["nhit"], h["hit_ch"],
                                          summed=not b.timed)
        sat |= bsat << np.uint8(i)
    return out, sat


def window_amplitude(wave: np.ndarray, b: BoardParams) -> np.ndarray:
    """(count, nch) largest sample of the reconstruction window minus the pedestal of full
    waveforms (count, samples, nch): what a zero-suppressing board compares with its
    threshold, and wave_board's amplitude before the peak correction."""
    w0, w1 = b.window
    return wave[:, w0:w1].max(axis=1) - b.ped


def _peak_thr(p: TriggerParams) -> float:
    # Amplitudes become pulse peaks from the pulse threshold on, and only where the largest
    # sample alone reaches the zero threshold: a channel a board suppresses stays below it,
    # so full and zero-suppressed waveforms give the same features.
    return max(p.config.pulse_threshold_adc, p.config.zero_threshold_adc)


def _pulse_thr(b: BoardParams, p: TriggerParams) -> float:
    # A timed board's pulses count from the zero threshold: below it a channel is no energy
    # anyway, and the feature front end marks pulses from 5 x noise (10 ADC, the default
    # zero threshold), not from the beam counters' `pulse_threshold_adc` (30 ADC would drop
    # the in-time pulse of a small SRD channel that the sum counts). A timed beam counter
    # keeps the multiplicity's threshold.
    timed_only = b.timed and b.name not in PULSE_BOARDS
    return p.config.zero_threshold_adc if timed_only else p.config.pulse_threshold_adc


def _full_waveforms(arrays: Mapping[str, np.ndarray], count: int, b: BoardParams,
                    p: TriggerParams, backend: ModuleType, sat: np.ndarray) -> BoardAmplitudes:
    wave = _need(arrays, f"{b.name}.wave", "<i2", (count, p.samples, b.nch))
    amp, npulse = np.empty((count, b.nch), np.float32), np.empty((count, b.nch), np.uint8)
    backend.wave_peak_board(wave, b.live, b.ped, *b.window, _pulse_thr(b, p),
                            p.adc_max, p.trigger_sample, p.sample_ns, False,
                            b.pulses,
                            _peak_thr(p), b.corr, amp, _NO_EXTRA, npulse, _NO_EXTRA, sat)
    return BoardAmplitudes(amp, npulse)


def _waveform_hits(arrays: Mapping[str, np.ndarray], count: int, b: BoardParams,
                   p: TriggerParams, backend: ModuleType, sat: np.ndarray) -> BoardAmplitudes:
    h = _hits(arrays, b, count, hits.WAVE_HITS, p.samples, backend)
    total = len(h["hit_ch"])
    amp, npulse = np.empty(total, np.float32), np.zeros(total, np.uint8)
    backend.wave_peak_hits(h["nhit"], h["hit_ch"], h["hit_wave"], b.live, b.ped, *b.window,
                           _pulse_thr(b, p), p.adc_max, b.pulses,
                           _peak_thr(p), b.corr, amp, npulse, sat)
    return BoardAmplitudes(amp, npulse, h["nhit"], h["hit_ch"])


def compute_features(arrays: Mapping[str, np.ndarray], count: int, mode: str, p: TriggerParams,
                     backend: ModuleType = kernels) -> Features:
    """Calibrated energies, multiplicity and saturation of every event of a built slice."""
    sums = np.zeros((count, N_GROUPS), np.float64)
    amps, sat = board_amplitudes(arrays, count, mode, p, backend, sums=sums)
    return sums_from_amplitudes(amps, sat, count, p, backend, sums=sums)


def sums_from_amplitudes(amps: Mapping[str, BoardAmplitudes], sat: np.ndarray, count: int,
                         p: TriggerParams, backend: ModuleType = kernels, *,
                         sums: np.ndarray | None = None) -> Features:
    """Energy sums and beam multiplicity from per-board amplitudes (config-dependent part).

    `sums` holds what `board_amplitudes` already added (boards marked `summed`); the other
    boards are added to it here, in board order, so the additions are made in the same order
    whichever pass makes them.

    A channel below `zero_threshold_adc` reads zero everywhere (sums, beam counters), as if
    the board had suppressed it: a full-waveform slice and its zero-suppressed version give
    the same features whenever the zero threshold is at least the suppression threshold.
    A channel of a timed board without a pulse in its window reads zero in the sums: both
    readout modes come through here with their pulse counts (waveforms: the trigger's,
    features: the front end's `hit_np`).
    """
    zthr = p.config.zero_threshold_adc
    if sums is None:
        sums = np.zeros((count, N_GROUPS), np.float64)
    for b in p.boards:
        ba = amps.get(b.name)
        if ba is None or ba.summed:
            continue
        amp = in_time(ba) if b.timed else ba.amp
        if ba.nhit is None:
            backend.accumulate(amp, b.weight, b.group, zthr, sums)
        else:
            backend.accumulate_hits(ba.nhit, ba.ch, amp, b.weight, b.group, zthr, sums)
    bp = _beam(p)
    nb = bp.nch if bp is not None else 0
    ba = amps.get("BEAM") if bp is not None else None
    alloc = np.zeros if ba is None else np.empty  # the beam kernels write every element
    f = Features(count, sums, np.empty(count, np.uint8), sat,
                 alloc((count, nb), np.float32), alloc((count, nb), np.uint8))
    if ba is not None and ba.nhit is None:
        backend.beam_dense(ba.amp, ba.npulse, zthr, f.beam_amp, f.beam_npulse)
    elif ba is not None:
        backend.beam_dense_hits(ba.nhit, ba.ch, ba.amp, ba.npulse, zthr, f.beam_amp,
                                f.beam_npulse)
    backend.multiplicity(f.beam_amp, f.beam_npulse, _beam_weight(p), p.s_idx, f.mult)
    if len(p.p_idx) and len(p.trk_idx):
        f.track = _track(f, p, backend)
    return f


def in_time(ba: BoardAmplitudes) -> np.ndarray:
    """`ba`'s amplitudes where a pulse peaks in the reconstruction window, 0 elsewhere: what
    a timed board adds to the sums (TriggerConfig.timed_boards)."""
    return _ro(np.where(ba.npulse > 0, ba.amp, np.zeros((), ba.amp.dtype)))


def _track(f: Features, p: TriggerParams, backend: ModuleType) -> dict[str, np.ndarray]:
    """The spectrometer's momentum (GeV) and track count, from its BEAM channels: tracks
    are counted in the TRK channel as the counters count particles (`multiplicity`: the
    pulses, plus the overlapping ones its amplitude holds). Empty when no event of the slice
    has a momentum: a stream from before the spectrometer, where no cut on it is possible
    (the monitors count such events as untracked)."""
    c = int(p.p_idx[0])
    mom = f.beam_amp[:, c] * np.float32(_beam_weight(p)[c])
    if not mom.any():
        return {}
    ntrk = np.empty(f.count, np.uint8)
    backend.multiplicity(f.beam_amp, f.beam_npulse, _beam_weight(p), p.trk_idx, ntrk)
    return {"p": mom.astype(np.float32, copy=False), "ntrk": ntrk}


def _beam(p: TriggerParams) -> BoardParams | None:
    return next((b for b in p.boards if b.name == "BEAM"), None)


def _beam_weight(p: TriggerParams) -> np.ndarray:
    bp = _beam(p)
    return bp.weight if bp is not None else np.zeros(0, np.float64)


def decide(f: Features, p: TriggerParams, *, run: int, spill: int, first: int,
           backend: ModuleType = kernels) -> tuple[np.ndarray, np.ndarray]:
    """(cond, bits) of every event: conditions met, and bits fired after prescale and mask."""
    cond = np.empty(f.count, np.uint8)
    bits = np.empty(f.count, np.uint8)
    backend.decide(f.beam_amp, _beam_weight(p), p.s_idx, p.v_idx, f.e_ecal, f.e_ps, run,
                   spill, first, p.fpar, p.ipar, cond, bits)
    return cond, bits


def neighbour_gaps(ts: np.ndarray, backend: ModuleType = kernels) -> dict[str, np.ndarray]:
    """Past-future protection: per event the time to the previous and the next event of the
    built slice, `dt_prev` and `dt_next` (uint16 ns, saturated at kernels.GAP_MAX; 0 when
    unknown: the slice's first and last events, whose neighbour is in another slice). The
    monitors measure the beam composition on events with no neighbour within the SRD's
    reach (docs/monitors.md, "Composition"); from accepted events alone, as a run file
    holds them, the gaps could not be found again."""
    out = {"dt_prev": np.empty(len(ts), np.uint16), "dt_next": np.empty(len(ts), np.uint16)}
    backend.neighbour_gaps(_ro(ts), out["dt_prev"], out["dt_next"])
    return out


def warm_up(geometry: Geometry, calibration: Calibration) -> None:
    """Compile (or load from the cache) every kernel specialisation a worker will use.

    Every board layout (full waveforms, zero-suppressed waveforms, feature hits), with BEAM
    counting pulses and the others not, untimed and timed by their pulse (a timed board's
    feature hits are summed by `accumulate_hits`); inputs both writable and read-only (as
    decoded from the wire), although `_ro` gives the kernels one type for both.
    """
    from trigger.config import TriggerConfig  # the default config is valid for any geometry

    for cfg in (TriggerConfig(), TriggerConfig(timed_boards=tuple(geometry.board_names))):
        _warm_up(build_params(cfg, geometry, calibration))
    neighbour_gaps(np.arange(2, dtype=np.int64))  # one specialisation: `_ro` makes ts read-only


def _warm_up(p: TriggerParams) -> None:
    for readonly in (False, True):
        for layout in ("wave", "wave_hits", "feature_hits"):
            arrays: dict[str, np.ndarray] = {}
            for b in p.boards:
                for k, a in _warm_up_board(b, p, layout).items():
                    a.flags.writeable = not readonly
                    arrays[f"{b.name}.{k}"] = a
            mode = "feature" if layout == "feature_hits" else "waveform"
            f = compute_features(arrays, 2, mode, p)
            decide(f, p, run=0, spill=0, first=0)
            f.arrays()
            select_events(arrays, np.arange(2, dtype=np.int64))  # accepted hits


def select_events(arrays: Mapping[str, np.ndarray], idx: np.ndarray,
                  backend: ModuleType = kernels) -> dict[str, np.ndarray]:
    """A built slice's arrays restricted to events `idx` (ascending int64), hits included.

    A board's per-hit arrays keep the hits of the kept events, in order (what
    daq.hits.select does, in two compiled passes: where each kept event's hits start, then
    the copy). Raises SliceError when a per-hit array is shorter than its `nhit` counts.
    """
    out = {name: a[idx] for name, a in arrays.items() if not hits.is_hit_array(name)}
    starts = np.empty(len(idx), np.int64)
    for name in arrays:
        board, _, rest = name.rpartition(".")
        if rest != "nhit":
            continue
        nhit = _ro(arrays[name])
        total = backend.hit_starts(nhit, idx, starts)
        end = int(starts[-1]) + int(nhit[idx[-1]]) if len(idx) else 0
        for k, a in arrays.items():
            if not hits.is_hit_array(k) or k.rpartition(".")[0] != board:
                continue
            if len(a) < end:  # the trigger may not have read this board (full waveforms)
                raise SliceError("shape", f"{k} has {len(a)} hits, {name} counts more")
            dst = np.empty((total, *a.shape[1:]), a.dtype)
            backend.gather_hits(_ro(a).reshape(-1), int(np.prod(a.shape[1:], dtype=np.int64)),
                                nhit, idx, starts, dst.reshape(-1))
            out[k] = dst
    return out


def _warm_up_board(b: BoardParams, p: TriggerParams, layout: str) -> dict[str, np.ndarray]:
    """Two events of one board in `layout`, channel 0 hit in both."""
    wave = np.full((2, p.samples, b.nch), 400, np.int16)
    wave[:, -1, 0] = 500
    mask = np.zeros((2, b.nch), bool)
    mask[:, 0] = True
    if layout == "wave":
        return {"wave": wave}
    if layout == "wave_hits":
        nhit, out = hits.sparsify(mask, {"hit_wave": wave})
    else:
        amp = np.where(mask, 100, 0).astype(np.int16)
        nhit, out = hits.sparsify(mask, {"hit_amp": amp, "hit_t": np.zeros_like(amp),
                                         "hit_np": mask.astype(np.uint8)})
    return {"nhit": nhit, **out}
