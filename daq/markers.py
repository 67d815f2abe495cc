"""Typed `meta` payloads of the wire's message kinds, checked when a message is decoded.

Every kind has one frozen dataclass whose fields are the `meta` keys it carries. A field
without a default is required; a field that defaults to None is optional, and nil on the
wire means the same as absent. `daq.wire.decode` checks the meta of every message against
its kind's payload (`check`): a missing required field or a value of the wrong type is a
`WireError` with reason `meta` naming the kind, the field and what was wrong, counted by
the receiving service like any other refused message, never a KeyError deep in a consumer.
Keys a payload does not name are kept in `Message.meta` and not checked (a newer writer
may add keys, docs/wire-format.md). Consumers read `SpillStart.of(msg).t0_ns`; writers
send `SpillStart(t0_ns=t0).to_meta()`, so that a misspelt field is a type error.

Only the top level of a meta map is checked, plus the entries of the count maps
(`scalers`, `incomplete`, ...) and of the nested `previous_end` and `calib_cells`: slices
are decoded at millions of events per second, and a trigger configuration is validated by
the trigger's own model when it is applied. Integers are counts, indices or times:
unsigned, < 2**63.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from daq.errors import WireError

if TYPE_CHECKING:
    from daq.wire import Message

_UINT_END = 1 << 63


def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _UINT_END


def _is_float(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_uint_map(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_uint(n) for k, n in v.items())


def _is_float_map(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_float(x) for k, x in v.items())


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


#: annotation -> (test of a wire value, what the error says was expected)
_TESTS: dict[object, tuple[Callable[[object], bool], str]] = {
    int: (_is_uint, "an unsigned integer < 2**63"),
    float: (_is_float, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    bool: (lambda v: isinstance(v, bool), "a bool"),
    dict[str, Any]: (lambda v: isinstance(v, dict), "a map"),
    dict[str, int]: (_is_uint_map, "a map of string to unsigned integer"),
    dict[str, float]: (_is_float_map, "a map of string to number"),
    list[str]: (_is_str_list, "a list of strings"),
}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    test: Callable[[object], bool]
    expected: str
    required: bool
    nested: type[Payload] | None  # a payload within the payload (`previous_end`)


@dataclass(frozen=True, slots=True)
class Payload:
    """Base of the typed payloads: checking, reading from and writing to a meta map."""

    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[_Field, ...]] = ()
    BY_NAME: ClassVar[dict[str, _Field]] = {}
    REQUIRED: ClassVar[tuple[_Field, ...]] = ()

    @classmethod
    def of(cls, msg: Message) -> Self:
        """The payload of `msg`, which must be of this payload's kind (a caller's bug if not)."""
        if msg.kind != cls.KIND:
            raise TypeError(f"a {msg.kind} message has no {cls.__name__} payload")
        return cls.from_meta(msg.meta)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], where: str = "") -> Self:
        """Checked payload from a meta map (WireError naming the field if it is not one)."""
        cls.check(meta, where)
        kw = {}
        for name, v in meta.items():
            f = cls.BY_NAME.get(name)
            if f is not None and v is not None:
                kw[name] = f.nested.from_meta(v) if f.nested is not None else v
        return cls(**kw)

    @classmethod
    def check(cls, meta: Mapping[str, Any], where: str = "") -> None:
        """Raise WireError("meta", ...) unless `meta` holds every required field and every
        field it holds has its type (unknown keys pass). Walks the keys present, not every
        field: a board's slice meta is one key of seven fields (decode's hot path)."""
        by_name = cls.BY_NAME
        for name, v in meta.items():
            f = by_name.get(name)
            if f is None or v is None:
                continue
            if not f.test(v):
                raise WireError("meta", f"{where or cls.KIND + ' meta'} field {name!r} is "
                                        f"{_short(v)}, expected {f.expected}")
            if f.nested is not None:
                f.nested.check(v, f"{where or cls.KIND + ' meta'} field {name!r}:")
        for f in cls.REQUIRED:
            if meta.get(f.name) is None:  # nil on the wire is absent
                raise WireError("meta", f"{where or cls.KIND + ' meta'} lacks required field "
                                        f"{f.name!r} ({f.expected})")

    def to_meta(self) -> dict[str, Any]:
        """The meta map to send: every field that is not None (checked, so that a writer
        passing, say, a numpy integer fails here and not in a receiver)."""
        meta = {}
        for f in self.FIELDS:
            v = getattr(self, f.name)
            if v is not None:
                meta[f.name] = v.to_meta() if isinstance(v, Payload) else v
        type(self).check(meta)
        return meta


def _short(v: object) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


_P = typing.TypeVar("_P", bound=type[Payload])


def _payload(kind: str) -> Callable[[_P], _P]:
    """Class decorator of a payload dataclass: its kind, and FIELDS derived from its
    annotations (one declaration: the dataclass's fields are the schema decode checks)."""

    def wrap(cls: _P) -> _P:
        hints = typing.get_type_hints(cls)
        fields = []
        for fd in dataclasses.fields(cls):
            ann = hints[fd.name]
            required = fd.default is dataclasses.MISSING
            if isinstance(ann, types.UnionType):  # `X | None`: optional
                ann = next(a for a in typing.get_args(ann) if a is not type(None))
            nested = ann if isinstance(ann, type) and issubclass(ann, Payload) else None
            test, expected = (_TESTS[ann] if nested is None
                              else (lambda v: isinstance(v, dict), f"a map ({ann.__name__})"))
            fields.append(_Field(fd.name, test, expected, required, nested))
        cls.KIND, cls.FIELDS = kind, tuple(fields)
        cls.BY_NAME = {f.name: f for f in fields}
        cls.REQUIRED = tuple(f for f in fields if f.required)
        return cls

    return wrap


# --- the payloads, by kind (docs/wire-format.md, "Meta fields of each kind") -----------


@_payload("run_start")
@dataclass(frozen=True, slots=True)
class RunStart(Payload):
    """A run begins (each board, then the builder once with its geometry and calibration)."""

    config: dict[str, Any] | None = None  # the run's configuration snapshot
    geometry: str | None = None  # geometry hash
    calibration: str | None = None  # calibration hash
    mode: str | None = None  # "waveform" or "feature"
    faults: dict[str, Any] | None = None  # simulator: the injected faults


@_payload("previous_end")
@dataclass(frozen=True, slots=True)
class PreviousEnd(Payload):
    """The builder's repeat of the previous spill's end, in the next spill_start and in
    run_stop: a consumer that lost the spill_end (a worker died with it) closes from it."""

    run: int
    spill: int
    slices: int
    events: int
    complete: int | None = None
    incomplete: dict[str, int] | None = None
    shed: int | None = None
    gaps: dict[str, int] | None = None
    scalers: dict[str, int] | None = None
    resumed: bool | None = None

    def as_end(self) -> SpillEnd:
        """The spill_end this repeats, marked as a copy (it lacks board_events, skipped
        and cfg, which the builder does not repeat)."""
        return SpillEnd(events=self.events, slices=self.slices, complete=self.complete,
                        incomplete=self.incomplete, shed=self.shed, gaps=self.gaps,
                        scalers=self.scalers, resumed=self.resumed, copy_of="previous_end")


@_payload("run_stop")
@dataclass(frozen=True, slots=True)
class RunStop(Payload):
    """A run ends (each board; the builder once with the run's counts)."""

    reason: str
    events: int | None = None  # builder: events built in the run
    spills: int | None = None  # builder: spills seen in the run
    previous_end: PreviousEnd | None = None
    boards_stopped: list[str] | None = None  # builder: boards whose run_stop came


@_payload("spill_start")
@dataclass(frozen=True, slots=True)
class SpillStart(Payload):
    """A spill begins (each board; the builder once with the configuration it applies)."""

    t0_ns: int  # start of the spill, ns
    cfg: str | None = None  # builder: hash of the active trigger configuration
    trigger_config: dict[str, Any] | None = None  # builder: that configuration
    shadow_config: dict[str, Any] | None = None  # builder: a configuration run in shadow
    previous_end: PreviousEnd | None = None
    resumed: bool | None = None  # builder: restarted within the spill


@_payload("spill_end")
@dataclass(frozen=True, slots=True)
class SpillEnd(Payload):
    """A spill ends: a board's with its own counts, the builder's with the spill's."""

    events: int  # events the board sent / the builder built
    scalers: dict[str, int] | None = None
    slices: int | None = None  # builder: built slices sent for the spill
    #: builder: built events with every board present (the live part, with `shed`)
    complete: int | None = None
    incomplete: dict[str, int] | None = None  # builder: events each board is missing from
    shed: int | None = None  # builder: events dropped for dead time
    gaps: dict[str, int] | None = None  # builder: lost messages per board
    board_events: dict[str, int] | None = None  # builder: each board's spill_end events
    skipped: bool | None = None  # builder: policy skip_spill dropped part of the spill
    resumed: bool | None = None  # builder: restarted within the spill
    cfg: str | None = None  # builder: hash of the spill's trigger configuration
    copy_of: str | None = None  # recorder: "previous_end" when rebuilt from the repeat


@_payload("slice")
@dataclass(frozen=True, slots=True)
class SliceMeta(Payload):
    """A board's slice (`mode`, `zs_adc`), a built slice (stamped by the builder) or a
    truth slice (`slice_index` only): every field is optional."""

    mode: str | None = None
    zs_adc: float | None = None  # zero-suppression threshold of a suppressing board
    slice_index: int | None = None
    cfg: str | None = None
    trigger_config: dict[str, Any] | None = None
    shadow_config: dict[str, Any] | None = None
    calib: str | None = None
    ecal_gain: dict[str, float] | None = None  # truth: true / calibration gain of the ECAL


@_payload("calib_cells")
@dataclass(frozen=True, slots=True)
class CalibCells(Payload):
    """The ECAL energy per cell of a slice's calibration-trigger events (features meta):
    what the monitors track each cell's energy scale with (they check the cell names and
    that the sums are finite and non-negative)."""

    n: int  # events summed
    sum: dict[str, float]  # per cell: summed energy, GeV
    sum2: dict[str, float]  # per cell: summed squared energy, GeV^2


@_payload("features")
@dataclass(frozen=True, slots=True)
class FeaturesMeta(Payload):
    """The trigger's features and bits of one built slice."""

    slice_index: int
    cfg: str | None = None
    shadow_cfg: str | None = None  # hash of the shadow configuration, if one ran
    mode: str | None = None
    calib: str | None = None
    calib_cells: CalibCells | None = None


@_payload("accepted")
@dataclass(frozen=True, slots=True)
class AcceptedMeta(Payload):
    """The accepted events of one built slice."""

    slice_index: int
    slice_count: int  # events in the built slice
    cfg: str | None = None
    trigger_config: dict[str, Any] | None = None
    mode: str | None = None
    calib: str | None = None


@_payload("config")
@dataclass(frozen=True, slots=True)
class ConfigMarker(Payload):
    """A trigger configuration became active (builder)."""

    trigger_config: dict[str, Any]
    cfg: str  # its content hash
    who: str | None = None  # who asked for it
    when: float | None = None  # the builder's clock when it was announced, s


@_payload("eos")
@dataclass(frozen=True, slots=True)
class EndOfStream(Payload):
    """The stream ends; nothing follows."""


def previous_end(msg: Message) -> PreviousEnd | None:
    """The repeat of the previous spill's end that a builder's spill_start or run_stop
    carries (None for any other message, or when there is none)."""
    if msg.kind == SpillStart.KIND:
        return SpillStart.of(msg).previous_end
    if msg.kind == RunStop.KIND:
        return RunStop.of(msg).previous_end
    return None


def mode_of(msg: Message) -> str | None:
    """The readout mode a run_start or a data message names (None: it names none)."""
    payload: type[RunStart | SliceMeta | FeaturesMeta | AcceptedMeta] | None = {
        RunStart.KIND: RunStart, SliceMeta.KIND: SliceMeta, FeaturesMeta.KIND: FeaturesMeta,
        AcceptedMeta.KIND: AcceptedMeta}.get(msg.kind)
    return None if payload is None else payload.of(msg).mode


def stamped_config(msg: Message) -> tuple[str | None, dict[str, Any] | None]:
    """The hash of the trigger configuration a data message or a builder's spill marker
    was stamped with, and the configuration itself where the message carries it."""
    p: SliceMeta | AcceptedMeta | SpillStart
    if msg.kind == SliceMeta.KIND:
        p = SliceMeta.of(msg)
    elif msg.kind == AcceptedMeta.KIND:
        p = AcceptedMeta.of(msg)
    elif msg.kind == SpillStart.KIND:
        p = SpillStart.of(msg)
    elif msg.kind == FeaturesMeta.KIND:
        return FeaturesMeta.of(msg).cfg, None
    elif msg.kind == SpillEnd.KIND:
        return SpillEnd.of(msg).cfg, None
    else:
        return None, None
    return p.cfg, p.trigger_config


#: the payload of each kind, by the kind's wire string
PAYLOADS: dict[str, type[Payload]] = {p.KIND: p for p in (
    RunStart, RunStop, SpillStart, SpillEnd, SliceMeta, FeaturesMeta, AcceptedMeta,
    ConfigMarker, EndOfStream)}


def check(kind: str, meta: Mapping[str, Any]) -> None:
    """What `daq.wire.decode` calls: WireError("meta", ...) if `meta` is not a `kind`'s."""
    PAYLOADS[kind].check(meta)
