"""Built slice in, FEATURES and ACCEPTED messages out: the worker's pure, synchronous core.

The configuration to apply travels in the slice (`meta.trigger_config`, hash `meta.cfg`);
the processor validates each configuration once and caches it by hash, so a change takes
effect exactly at the spill where the builder starts stamping it, in every worker and in
a replay. Messages leave without `seq`: each output stream numbers its own (`Stamper`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from daq.config import content_hash
from daq.errors import ConfigError, WireError
from daq.geometry import Calibration, Geometry
from daq.markers import AcceptedMeta, FeaturesMeta, SliceMeta
from daq.wire import Kind, Message
from trigger import kernels
from trigger.config import CALIBRATION, TRIGGER_BITS, parse_config
from trigger.core import (
    Features,
    TriggerParams,
    board_amplitudes,
    build_params,
    compute_features,
    decide,
    neighbour_gaps,
    select_events,
)
from trigger.errors import SliceError

#: marker kinds a worker forwards to both of its outputs
MARKERS = frozenset({Kind.RUN_START, Kind.RUN_STOP, Kind.SPILL_START, Kind.SPILL_END,
                     Kind.CONFIG, Kind.END_OF_STREAM})
_CACHE_SIZE = 16


@dataclass
class Stamper:
    """Numbers the messages of one output stream (`src`, `seq` from 0)."""

    src: str
    seq: int = 0

    def __call__(self, msg: Message) -> Message:
        out = Message(kind=msg.kind, run=msg.run, spill=msg.spill, seq=self.seq, src=self.src,
                      board=msg.board, first=msg.first, count=msg.count, arrays=msg.arrays,
                      meta=msg.meta, replay=msg.replay)
        self.seq += 1
        return out


@dataclass
class SliceResult:
    """What one built slice gave: the two output messages and per-type counts."""

    features: Message
    accepted: Message
    cfg: TriggerParams
    fired: dict[str, int] = field(default_factory=dict)  # type -> events with that bit
    shadow_fired: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    shadow_kept: int = 0
    shadow_error: str | None = None


def _fired(bits: np.ndarray) -> dict[str, int]:
    return {name: int(np.count_nonzero(bits & bit)) for name, bit in TRIGGER_BITS.items()}


class SliceProcessor:
    """Runs the trigger over built slices with the configuration each slice names."""

    def __init__(self, geometry: Geometry, calibration: Calibration, *,
                 backend: ModuleType = kernels) -> None:
        self.geometry = geometry
        self.calibration = calibration
        self.backend = backend
        self._cache: OrderedDict[str, TriggerParams | ConfigError] = OrderedDict()
        self._ecal_names = (tuple(c.name for c in geometry.board("ECAL").channels)
                            if "ECAL" in geometry.board_names else ())

    def params(self, data: Any, cfg_hash: Any) -> TriggerParams:
        """The validated params of a stamped configuration (cached by hash)."""
        if not isinstance(data, dict):
            raise SliceError("config", f"trigger_config is {type(data).__name__}, not a map")
        if not isinstance(cfg_hash, str) or content_hash(data) != cfg_hash:
            raise SliceError("config", f"cfg hash {cfg_hash!r} does not match the configuration")
        hit = self._cache.get(cfg_hash)
        if hit is None:
            try:
                hit = build_params(parse_config(data, self.geometry), self.geometry,
                                   self.calibration)
            except ConfigError as e:
                hit = e
            self._cache[cfg_hash] = hit
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        if isinstance(hit, ConfigError):
            raise SliceError("config", str(hit))
        return hit

    def process(self, msg: Message) -> SliceResult:
        """Features and decision of one built slice; raises SliceError if it is refused."""
        if msg.kind is not Kind.SLICE or msg.board != "ALL":
            raise SliceError("kind", f"{msg.kind}/{msg.board!r} is not a built slice")
        try:
            meta = SliceMeta.of(msg)
        except WireError as e:  # one that did not come through decode
            raise SliceError("meta", e.detail) from None
        if meta.calib != self.calibration.hash:
            raise SliceError("calibration", f"slice calibration {meta.calib!r}, this worker "
                                            f"has {self.calibration.hash!r}")
        p = self.params(meta.trigger_config, meta.cfg)
        mode = meta.mode if meta.mode is not None else repr(None)
        f = compute_features(msg.arrays, msg.count, mode, p, self.backend)
        cond, bits = decide(f, p, run=msg.run, spill=msg.spill, first=msg.first,
                            backend=self.backend)
        shadow, shadow_hash, shadow_error = self._shadow(msg, meta, mode, p, f)
        feat = self._features(msg, meta, f, cond, bits, shadow, shadow_hash, mode,
                              self.backend)
        cells = calib_cells(msg, bits, mode, p, self._ecal_names, self.backend)
        if cells is not None:
            feat.meta["calib_cells"] = cells
        res = SliceResult(feat,
                          Message(Kind.ACCEPTED), p, _fired(bits),
                          _fired(shadow) if shadow_hash else {},
                          int(np.count_nonzero(bits)), int(np.count_nonzero(shadow)),
                          shadow_error)
        res.accepted = self._accepted(msg, meta, res.features, bits, mode, self.backend)
        return res

    def _shadow(self, msg: Message, meta: SliceMeta, mode: str, p: TriggerParams,
                f: Features) -> tuple[np.ndarray, str | None, str | None]:
        data = meta.shadow_config
        none = np.zeros(msg.count, np.uint8)
        if data is None:
            return none, None, None
        h = content_hash(data)
        try:
            sp = self.params(data, h)
        except SliceError as e:
            return none, None, e.detail
        # features depend on a few settings only; share them when those agree
        sf = f if sp.feature_key == p.feature_key else compute_features(
            msg.arrays, msg.count, mode, sp, self.backend)
        return decide(sf, sp, run=msg.run, spill=msg.spill, first=msg.first,
                      backend=self.backend)[1], h, None

    @staticmethod
    def _features(msg: Message, meta: SliceMeta, f: Features, cond: np.ndarray,
                  bits: np.ndarray, shadow: np.ndarray, shadow_hash: str | None, mode: str,
                  backend: ModuleType) -> Message:
        ts = msg.arrays.get("ts")
        ts = ts if ts is not None else np.zeros(msg.count, np.int64)
        missing = msg.arrays.get("missing")
        arrays = {"ts": ts, **f.arrays(backend),
                  "missing": missing if missing is not None else np.zeros(msg.count, np.uint8),
                  "cond": cond, "bits": bits, "shadow": shadow,
                  **neighbour_gaps(ts, backend)}
        out = FeaturesMeta(meta.slice_index or 0, cfg=meta.cfg, shadow_cfg=shadow_hash,
                           mode=mode, calib=meta.calib)
        return Message(Kind.FEATURES, run=msg.run, spill=msg.spill, board="ALL",
                       first=msg.first, count=msg.count, arrays=arrays, meta=out.to_meta(),
                       replay=msg.replay)

    @staticmethod
    def _accepted(msg: Message, meta: SliceMeta, feat: Message, bits: np.ndarray, mode: str,
                  backend: ModuleType) -> Message:
        idx = np.flatnonzero(bits)
        arrays = select_events(msg.arrays, idx, backend)
        for name, a in feat.arrays.items():
            if name not in arrays:
                arrays[name] = a[idx]
        arrays["event"] = (idx + msg.first).astype(np.uint32)
        out = AcceptedMeta(meta.slice_index or 0, msg.count, cfg=meta.cfg,
                           trigger_config=meta.trigger_config, mode=mode, calib=meta.calib)
        return Message(Kind.ACCEPTED, run=msg.run, spill=msg.spill, board="ALL",
                       first=msg.first, count=len(idx), arrays=arrays, meta=out.to_meta(),
                       replay=msg.replay)


def calib_cells(msg: Message, bits: np.ndarray, mode: str, p: TriggerParams,
                names: tuple[str, ...], backend: ModuleType = kernels) -> dict[str, Any] | None:
    """The ECAL energy per cell of the slice's complete calibration-trigger events, summed
    (`sum`) and squared (`sum2`) per channel that saw any, with their number `n`: what the
    monitors track each cell's energy scale with (docs/monitors.md, "Calibration").
    Energies as the trigger sums them (amplitude / gain from the zero threshold on, masked
    channels out); `names` are the ECAL's channels. None when the slice has no such event
    or no ECAL. Runs after compute_features, which checked the arrays."""
    idx = np.flatnonzero((bits & CALIBRATION) != 0)  # a bool mask: numpy's fast path
    missing = msg.arrays.get("missing")
    if missing is not None:
        idx = idx[missing[idx] == 0]
    ecal = next((b for b in p.boards if b.name == "ECAL"), None)
    read = "ECAL.nhit" in msg.arrays or "ECAL.wave" in msg.arrays  # else: ECAL read nothing
    if not len(idx) or ecal is None or not read:
        return None
    if "ECAL.hit_amp" in msg.arrays:  # feature hits, the usual case: no pulse search
        ch, amp = _feature_hits(msg.arrays, idx, backend)
    else:
        sub = select_events({k: a for k, a in msg.arrays.items() if k.startswith("ECAL.")},
                            idx, backend)
        ba = board_amplitudes(sub, len(idx), mode, p, backend)[0]["ECAL"]
        if ba.nhit is None:
            ch, amp = np.indices(ba.amp.shape)[1].ravel(), ba.amp.ravel()
        else:
            assert ba.ch is not None  # hits come with their channels
            ch, amp = ba.ch, ba.amp
    a = amp.astype(np.float64)
    ok = (a >= p.config.zero_threshold_adc) & (ecal.group[ch] >= 0)
    c = ch[ok].astype(np.int64)
    e = a[ok] * ecal.weight[c]  # one (event, channel) per hit: channels are in order
    total = np.bincount(c, weights=e, minlength=ecal.nch)
    total2 = np.bincount(c, weights=e * e, minlength=ecal.nch)
    seen = np.flatnonzero(total > 0)
    return {"n": len(idx), "sum": {names[c]: float(total[c]) for c in seen},
            "sum2": {names[c]: float(total2[c]) for c in seen}}


def _feature_hits(arrays: Mapping[str, np.ndarray], idx: np.ndarray, backend: ModuleType
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(channel, amplitude) of every ECAL feature hit of events `idx`."""
    nhit = arrays["ECAL.nhit"]
    starts = np.empty(len(idx), np.int64)
    backend.hit_starts(nhit, idx, starts)
    lens = nhit[idx].astype(np.int64)
    h = np.arange(int(lens.sum())) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return arrays["ECAL.hit_ch"][h], arrays["ECAL.hit_amp"][h]
