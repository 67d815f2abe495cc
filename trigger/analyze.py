"""Offline analysis: run the trigger in-process over a run file, as fast as it goes.

A raw (board-level) file goes through the event builder core first; a built file is
processed directly. The configuration of each slice is the one recorded in the stream
(CONFIG markers, stamped slices), so an analysis reproduces what ran online; passing
`trigger_config` instead applies one configuration to every spill (what-if analysis).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from daq.builder import EventBuilder
from daq.config import content_hash
from daq.errors import ConfigError
from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from daq.markers import ConfigMarker, FeaturesMeta, SliceMeta
from daq.runfile import RunFileReader
from daq.wire import Kind, Message
from trigger import kernels
from trigger.config import TRIGGER_BITS, TriggerConfig, parse_config
from trigger.core import Features, TriggerParams, decide
from trigger.errors import SliceError, TriggerError
from trigger.processor import MARKERS, SliceProcessor, SliceResult, Stamper


def load_config_file(path: str | Path, geometry: Geometry | None = None) -> TriggerConfig:
    """A TriggerConfig from a JSON or TOML file (by suffix)."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except OSError as e:
        raise ConfigError("trigger_config", str(p), f"cannot be read ({e.strerror})") from None
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("trigger_config", str(p), f"is not valid JSON/TOML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError("trigger_config", str(p), "must hold a map of settings")
    return parse_config(data, geometry)


def _restamp(msg: Message, cfg: dict[str, Any], h: str) -> Message:
    meta = replace(SliceMeta.of(msg), trigger_config=cfg, cfg=h).to_meta()
    return Message(msg.kind, msg.run, msg.spill, msg.seq, msg.src, msg.board, msg.first,
                   msg.count, msg.arrays, meta, msg.replay)


def iter_features(path: str | Path, trigger_config: TriggerConfig | None = None, *,
                  geometry: Geometry | None = None, calibration: Calibration | None = None,
                  backend: ModuleType = kernels, refused: dict[str, int] | None = None
                  ) -> Iterator[Message]:
    """Markers and FEATURES messages of a run file, in stream order (src `analyze`).

    Slices that cannot be processed are skipped and counted in `refused` by reason.
    """
    stamp = Stamper("analyze")
    for msg, res in iter_processed(path, trigger_config, geometry=geometry,
                                   calibration=calibration, backend=backend, refused=refused):
        yield stamp(msg if res is None else res.features)


def iter_processed(path: str | Path, trigger_config: TriggerConfig | None = None, *,
                   spills: tuple[int, int] | None = None, geometry: Geometry | None = None,
                   calibration: Calibration | None = None, backend: ModuleType = kernels,
                   refused: dict[str, int] | None = None
                   ) -> Iterator[tuple[Message, SliceResult | None]]:
    """Each built slice of a raw or built run file with what the trigger made of it, and
    the markers (with None), in stream order; `spills=(a, b)`: only spills a..b.

    Slices that cannot be processed are skipped and counted in `refused` by reason.
    """
    geom = geometry or load_geometry()
    cal = calibration or load_calibration(geom)
    proc = SliceProcessor(geom, cal, backend=backend)
    override = trigger_config.model_dump(mode="json") if trigger_config is not None else None
    o_hash = content_hash(override) if override is not None else ""
    for msg in _built(RunFileReader(path).messages(spills), geom, cal, override):
        if msg.kind is Kind.SLICE:
            if override is not None:
                msg = _restamp(msg, override, o_hash)
            try:
                yield msg, proc.process(msg)
            except SliceError as e:
                if refused is not None:
                    refused[e.reason] = refused.get(e.reason, 0) + 1
        elif msg.kind in MARKERS:
            yield msg, None


def decide_at(f: Features, p: TriggerParams, *, run: int, spill: int, events: np.ndarray,
              backend: ModuleType = kernels) -> tuple[np.ndarray, np.ndarray]:
    """(cond, bits) of events whose numbers within the spill are `events` (ascending, not
    necessarily consecutive: the accepted events of a recorded slice). The prescales pick
    events by a hash of (run, spill, event number), so each run of consecutive numbers is
    decided as the slice it came from was."""
    n = f.count
    cond, bits = np.empty(n, np.uint8), np.empty(n, np.uint8)
    ev = np.asarray(events, np.int64)
    cuts = [0, *(np.flatnonzero(np.diff(ev) != 1) + 1).tolist(), n]
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        sub = Features(b - a, f.sums[a:b], f.mult[a:b], f.sat[a:b], f.beam_amp[a:b],
                       f.beam_npulse[a:b])
        cond[a:b], bits[a:b] = decide(sub, p, run=run, spill=spill, first=int(ev[a]),
                                      backend=backend)
    return cond, bits


def _built(messages: Iterable[Message], geom: Geometry, cal: Calibration,
           override: dict[str, Any] | None) -> Iterator[Message]:
    """Built-level messages: raw board streams go through the builder core, others pass."""
    boards = set(geom.board_names)
    builder: EventBuilder | None = None
    default = override or TriggerConfig().model_dump(mode="json")
    for msg in messages:
        if builder is None and (msg.board in boards or msg.src in boards):
            builder = EventBuilder(geom, calibration=cal.hash,
                                   default_trigger_config=lambda: default)
        if builder is None:
            yield msg
        elif msg.kind is Kind.CONFIG and msg.board not in boards:
            # a configuration change recorded in a raw stream: replay it where it happened
            if override is None:
                c = ConfigMarker.of(msg)
                builder.set_trigger_config(c.trigger_config, c.who or "replay")
        else:
            yield from builder.feed(msg, 0.0)  # a frozen clock: timeouts only at finish
    if builder is not None:
        yield from builder.finish(0.0)


@dataclass
class SpillSummary:
    """Trigger counts of one spill."""

    run: int
    spill: int
    events: int = 0
    slices: int = 0
    accepted: int = 0
    fired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIGGER_BITS, 0))
    shadow: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIGGER_BITS, 0))
    shadow_accepted: int = 0
    cfg: set[str] = field(default_factory=set)
    shadow_cfg: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        rate = self.accepted / self.events if self.events else 0.0
        return {"run": self.run, "spill": self.spill, "events": self.events,
                "slices": self.slices, "accepted": self.accepted, "accept_rate": rate,
                "fired": self.fired, "shadow_fired": self.shadow,
                "shadow_accepted": self.shadow_accepted, "cfg": sorted(self.cfg),
                "shadow_cfg": sorted(self.shadow_cfg)}


def summarize(stream: Iterable[Message]) -> list[SpillSummary]:
    """Per-spill trigger counts from FEATURES messages (markers are ignored)."""
    spills: dict[tuple[int, int], SpillSummary] = {}
    for m in stream:
        _count(spills, m)
    return [spills[k] for k in sorted(spills)]


def _count(spills: dict[tuple[int, int], SpillSummary], m: Message) -> None:
    if m.kind is not Kind.FEATURES:
        return
    s = spills.setdefault((m.run, m.spill), SpillSummary(m.run, m.spill))
    bits, shadow = m.arrays["bits"], m.arrays["shadow"]
    s.events += m.count
    s.slices += 1
    s.accepted += int((bits != 0).sum())
    for name, bit in TRIGGER_BITS.items():
        s.fired[name] += int((bits & bit != 0).sum())
        s.shadow[name] += int((shadow & bit != 0).sum())
    meta = FeaturesMeta.of(m)
    if meta.shadow_cfg:
        s.shadow_accepted += int((shadow != 0).sum())
        s.shadow_cfg.add(meta.shadow_cfg)
    s.cfg.add(str(meta.cfg))


def analyze_run(path: str | Path, trigger_config: TriggerConfig | None = None,
                monitor_config: Any = None) -> dict[str, Any]:
    """`na64daq analyze`: the trigger and the monitors over a run file, in one pass.

    The monitors' report (`{"run", "spills", "totals"}`, docs/monitors.md) with each spill's
    trigger counts (`fired`, `accept_rate`, `shadow`, ...) merged in, plus the file's
    totals and the slices the trigger refused.
    """
    from monitors.analysis import analyze as monitor_analysis  # the layer above both

    if not Path(path).exists() and not Path(str(path) + ".partial").exists():
        raise TriggerError(f"{path}: no such run file")
    refused: dict[str, int] = {}
    counts: dict[tuple[int, int], SpillSummary] = {}

    def counted(stream: Iterable[Message]) -> Iterator[Message]:
        for m in stream:
            _count(counts, m)
            yield m

    report = monitor_analysis(counted(iter_features(path, trigger_config, refused=refused)),
                              monitor_config).report()
    trig = {k[1]: v.as_dict() for k, v in counts.items()}
    for s in report["spills"]:
        for key, value in trig.get(s["spill"], {}).items():
            s.setdefault(key, value)
    report.update(file=str(path), events=sum(v.events for v in counts.values()),
                  accepted=sum(v.accepted for v in counts.values()), refused=refused)
    return report


def analyze(path: str | Path, trigger_config: TriggerConfig | None = None) -> dict[str, Any]:
    """Run the trigger over a run file; per-spill counts, totals and refusals, JSON-able."""
    if not Path(path).exists() and not Path(str(path) + ".partial").exists():
        raise TriggerError(f"{path}: no such run file")
    refused: dict[str, int] = {}
    spills = summarize(iter_features(path, trigger_config, refused=refused))
    events = sum(s.events for s in spills)
    accepted = sum(s.accepted for s in spills)
    return {"file": str(path), "spills": [s.as_dict() for s in spills],
            "events": events, "accepted": accepted, "refused": refused}
