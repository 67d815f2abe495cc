"""Typed marker payloads: every kind round-trips through the wire, every required field
missing or any field of the wrong type is refused at decode with a WireError naming the
kind and the field, random meta maps raise nothing but WireError, and a run file written
with the meta maps of the writers before the payloads were typed still reads."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marker_data import BAD, ann, full, metas, required

from daq import markers
from daq.errors import WireError
from daq.inspect import summarize
from daq.markers import (
    PAYLOADS,
    AcceptedMeta,
    CalibCells,
    ConfigMarker,
    FeaturesMeta,
    PreviousEnd,
    RunStart,
    RunStop,
    SliceMeta,
    SpillEnd,
    SpillStart,
    previous_end,
    stamped_config,
)
from daq.runfile import RunFileReader, RunFileWriter
from daq.wire import Kind, Message, decode, encode


def _message(kind: Kind, meta: dict[str, Any]) -> list[Any]:
    return encode(Message(kind, run=4, spill=2, src="builder", meta=meta), with_crc=False)


def _frames_with_meta(kind: Kind, meta: object) -> list[Any]:
    """Frames whose header carries `meta` as is (encode would refuse a bad one)."""
    frames = _message(kind, {**required(PAYLOADS[kind]).to_meta()})
    h = msgpack.unpackb(frames[0])
    h["meta"] = meta
    return [msgpack.packb(h), *frames[1:]]


FIELDS = [(k, f.name) for k in Kind for f in PAYLOADS[k].FIELDS]
REQUIRED = [(k, f.name) for k in Kind for f in PAYLOADS[k].FIELDS if f.required]
WRONG = [(k, f.name, bad) for k in Kind for f in PAYLOADS[k].FIELDS
         for bad in ([[], "x", 5] if f.nested else BAD[ann(PAYLOADS[k], f.name)])]


def test_every_kind_has_a_payload() -> None:
    assert set(PAYLOADS) == {k.value for k in Kind}
    assert all(k == PAYLOADS[k].KIND for k in Kind)


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("build", [full, required])
def test_every_kind_round_trips(kind: Kind, build: Any) -> None:
    payload = build(PAYLOADS[kind])
    out = decode(_message(kind, payload.to_meta()))
    assert PAYLOADS[kind].of(out) == payload


def test_to_meta_leaves_out_what_is_not_set() -> None:
    assert SpillEnd(12).to_meta() == {"events": 12}
    assert SliceMeta(mode="feature").to_meta() == {"mode": "feature"}
    assert SpillStart(5, previous_end=PreviousEnd(1, 2, 3, 4)).to_meta() == {
        "t0_ns": 5, "previous_end": {"run": 1, "spill": 2, "slices": 3, "events": 4}}


@pytest.mark.parametrize(("kind", "name"), REQUIRED)
def test_a_missing_required_field_is_refused(kind: Kind, name: str) -> None:
    meta = required(PAYLOADS[kind]).to_meta()
    for absent in (None, "gone"):  # nil on the wire is absent
        if absent is None:
            meta[name] = None
        else:
            del meta[name]
        with pytest.raises(WireError) as e:
            decode(_frames_with_meta(kind, meta))
        assert e.value.reason == "meta"
        assert str(kind) in e.value.detail and repr(name) in e.value.detail
        assert "lacks required field" in e.value.detail


@pytest.mark.parametrize(("kind", "name", "bad"), WRONG)
def test_a_field_of_the_wrong_type_is_refused(kind: Kind, name: str, bad: object) -> None:
    meta = {**required(PAYLOADS[kind]).to_meta(), name: bad}
    with pytest.raises(WireError) as e:
        decode(_frames_with_meta(kind, meta))
    assert e.value.reason == "meta"
    assert str(kind) in e.value.detail and repr(name) in e.value.detail
    assert "expected" in e.value.detail
    with pytest.raises(WireError):  # and a writer cannot send it either
        encode(Message(kind, meta=meta))


@pytest.mark.parametrize("name", [f.name for f in PreviousEnd.FIELDS if f.required])
def test_previous_end_is_checked_inside_its_marker(name: str) -> None:
    prev = PreviousEnd(1, 2, 3, 4).to_meta()
    del prev[name]
    for kind, meta in ((Kind.SPILL_START, {"t0_ns": 0}), (Kind.RUN_STOP, {"reason": "x"})):
        with pytest.raises(WireError) as e:
            decode(_frames_with_meta(kind, {**meta, "previous_end": prev}))
        assert "previous_end" in e.value.detail and repr(name) in e.value.detail


def test_unknown_keys_pass_and_are_kept() -> None:
    out = decode(_message(Kind.SPILL_END, {"events": 3, "future": [1, "x"]}))
    assert out.meta["future"] == [1, "x"]
    assert SpillEnd.of(out) == SpillEnd(3)


def test_reading_a_payload_of_another_kind_is_a_bug() -> None:
    with pytest.raises(TypeError, match="spill_end"):
        SpillStart.of(Message(Kind.SPILL_END, meta={"events": 1}))


KEYS = sorted({f.name for p in PAYLOADS.values() for f in p.FIELDS} | {"x", ""})
meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4),
    max_leaves=10,
)


@given(st.sampled_from(list(Kind)),
       st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), meta_values, max_size=8))
@settings(max_examples=400, deadline=None)
def test_random_meta_raises_nothing_but_wire_error(kind: Kind, meta: dict[str, Any]) -> None:
    try:
        frames = _frames_with_meta(kind, meta)
    except (TypeError, ValueError, OverflowError):
        return  # msgpack cannot hold it (ints beyond 64 bits): no such message exists
    try:
        msg = decode(frames)
    except WireError as e:  # binary in the meta is refused by the header's parser
        assert e.reason in ("meta", "header")
        assert e.reason == "header" or str(kind) in e.detail
        return
    payload = PAYLOADS[kind].of(msg)  # what decode lets through, a consumer can read
    assert type(payload) is PAYLOADS[kind]
    assert markers.mode_of(msg) in (None, getattr(payload, "mode", None))
    stamped_config(msg)
    previous_end(msg)


# --- run files written before the payloads were typed --------------------------------

#: the meta maps the writers sent before this change (builder, trigger, recorder): nil
#: values written out, keys the payloads do not name (faults), float `when`
OLD_STREAM: list[tuple[Kind, int, dict[str, Any]]] = [
    (Kind.RUN_START, 0, {"config": {"beam": 100}, "geometry": "g", "calibration": "c",
                         "mode": "feature", "faults": {"seed": 1}}),
    (Kind.CONFIG, 0, {"trigger_config": {"enabled": ["beam"]}, "cfg": "h1", "who": "default",
                      "when": 12.5}),
    (Kind.SPILL_START, 0, {"t0_ns": 1000, "cfg": "h1", "trigger_config": {"enabled": ["beam"]},
                           "shadow_config": None, "previous_end": None, "resumed": False}),
    (Kind.ACCEPTED, 0, {"slice_index": 0, "slice_count": 5, "cfg": "h1",
                        "trigger_config": {"enabled": ["beam"]}, "mode": "feature",
                        "calib": "c"}),
    (Kind.FEATURES, 0, {"slice_index": 0, "cfg": "h1", "shadow_cfg": None, "mode": "feature",
                        "calib": "c"}),
    (Kind.SPILL_END, 0, {"slices": 1, "events": 5, "incomplete": {"ECAL": 0}, "shed": 0,
                         "gaps": {}, "scalers": {"S1": 5, "V1": 1}, "board_events": {"ECAL": 5},
                         "skipped": False, "resumed": False, "cfg": "h1"}),
    (Kind.SPILL_START, 1, {"t0_ns": 9000, "cfg": "h1", "trigger_config": {"enabled": ["beam"]},
                           "shadow_config": None, "resumed": False, "previous_end": {
                               "run": 4, "spill": 0, "slices": 1, "events": 5,
                               "incomplete": {"ECAL": 0}, "shed": 0, "gaps": {},
                               "scalers": {"S1": 5, "V1": 1}, "resumed": False}}),
    (Kind.SPILL_END, 1, {"run": 4, "spill": 0, "slices": 0, "events": 0, "incomplete": {},
                         "shed": 0, "gaps": {}, "scalers": {}, "resumed": False,
                         "copy_of": "previous_end"}),
    (Kind.RUN_STOP, 1, {"reason": "end of input", "events": 5, "spills": 2,
                        "previous_end": None, "boards_stopped": ["ECAL"]}),
    (Kind.END_OF_STREAM, 1, {}),
]


def test_a_run_file_with_the_old_meta_maps_still_reads(tmp_path: Path) -> None:
    w = RunFileWriter(tmp_path / "run.na64", run=4, config={}, geometry_hash="g",
                      calibration_hash="c")
    for seq, (kind, spill, meta) in enumerate(OLD_STREAM):
        w.write(Message(kind, run=4, spill=spill, seq=seq, src="builder", meta=meta))
    (path,) = w.close()
    got = list(RunFileReader(path))
    assert [(m.kind, m.meta) for m in got] == [(k, meta) for k, _, meta in OLD_STREAM]
    start, end = SpillStart.of(got[6]), SpillEnd.of(got[5])
    assert start.t0_ns == 9000 and start.shadow_config is None and start.resumed is False
    assert start.previous_end == PreviousEnd(4, 0, 1, 5, incomplete={"ECAL": 0}, shed=0,
                                             gaps={}, scalers={"S1": 5, "V1": 1},
                                             resumed=False)
    assert previous_end(got[6]) == start.previous_end
    assert start.previous_end.as_end().copy_of == "previous_end"
    assert end.board_events == {"ECAL": 5} and end.scalers == {"S1": 5, "V1": 1}
    assert RunStart.of(got[0]).mode == "feature" and RunStart.of(got[0]).faults == {"seed": 1}
    assert ConfigMarker.of(got[1]).when == 12.5
    assert AcceptedMeta.of(got[3]).slice_count == 5
    assert FeaturesMeta.of(got[4]).shadow_cfg is None
    assert RunStop.of(got[8]).boards_stopped == ["ECAL"]
    assert stamped_config(got[3]) == ("h1", {"enabled": ["beam"]})
    s = summarize(path)  # the operator's view reads it through the payloads
    assert [sp.events for sp in s.spills] == [5, 0]


def test_payloads_are_frozen() -> None:
    p = SpillEnd(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.events = 4  # type: ignore[misc]


# Written by the code before the payloads were typed (main at 77c0c7a): `na64daq simulate
# --out raw --spills 2 --intensity 200000 --generated-s 0.0005 --mode feature
# --slice-events 32 --seed 3`, and that file through trigger.analyze.iter_processed (its
# builder and trigger) into a recorded file of markers, ACCEPTED and FEATURES messages.
DATA = Path(__file__).parent / "data"
OLD_FILES = ["pre-typed-meta-raw.na64", "pre-typed-meta-recorded.na64"]


@pytest.mark.parametrize("name", OLD_FILES)
def test_run_files_written_before_the_payloads_read_whole(name: str) -> None:
    r = RunFileReader(DATA / name)
    msgs = list(r)
    assert r.report.closed_cleanly and not r.report.torn and r.report.bytes_dropped == 0
    assert {m.kind for m in msgs} >= {Kind.RUN_START, Kind.SPILL_START, Kind.SPILL_END,
                                      Kind.END_OF_STREAM}
    for m in msgs:
        assert type(PAYLOADS[m.kind].of(m)) is PAYLOADS[m.kind]


def test_an_old_raw_file_goes_through_builder_and_trigger() -> None:
    from trigger.analyze import iter_processed

    msgs = list(RunFileReader(DATA / OLD_FILES[0]))
    sent = {(m.board, m.spill): SpillEnd.of(m).events for m in msgs if m.kind is Kind.SPILL_END}
    out = list(iter_processed(DATA / OLD_FILES[0]))
    triggered = sum(res.features.count for _, res in out if res is not None)
    ends = [SpillEnd.of(m) for m, _ in out if m.kind is Kind.SPILL_END]
    beam = sum(v for (b, _), v in sent.items() if b == "BEAM")
    assert triggered == sum(e.events for e in ends) == beam > 0
    assert all(e.board_events == {b: v for (b, s), v in sent.items() if s == i}
               for i, e in enumerate(ends))


def test_an_old_recorded_file_summarises() -> None:
    msgs = list(RunFileReader(DATA / OLD_FILES[1]))
    accepted = {}
    for m in msgs:
        if m.kind is Kind.ACCEPTED:
            accepted[m.spill] = accepted.get(m.spill, 0) + AcceptedMeta.of(m).slice_count
    s = summarize(DATA / OLD_FILES[1])
    assert {sp.spill: sp.events for sp in s.spills} == accepted
    assert all(sp.trigger_cfg for sp in s.spills)


def _doc_sections() -> dict[str, tuple[set[str], set[str]]]:
    """docs/wire-format.md's meta tables: heading -> (fields, required fields)."""
    text = (Path(__file__).parents[2] / "docs" / "wire-format.md").read_text()
    part = text.split("## Meta fields of each kind", 1)[1].split("\n## ", 1)[0]
    out = {}
    for sec in part.split("\n### ")[1:]:
        heading, *lines = sec.splitlines()
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines
                if ln.startswith("| ") and not ln.startswith("| ---")]
        head, body = rows[0] if rows else [], rows[1:]
        fields, must = set(), set()
        for r in body:
            names = {n.strip(" `") for n in r[0].split(",")}
            fields |= names
            if "required" in head and r[head.index("required")].startswith("yes"):
                must |= names
        out[heading] = (fields, must)
    return out


def test_the_doc_tables_are_the_payloads() -> None:
    """An outside front-end author writes from docs/wire-format.md: it must say what the
    decoder checks."""
    payloads = {**{p.KIND: p for p in PAYLOADS.values()}, "previous_end": PreviousEnd,
                "calib_cells": CalibCells}
    seen = set()
    for heading, (fields, must) in _doc_sections().items():
        kinds = [k for k in payloads if f"`{k}`" in heading.split("(")[0].split(":")[0]]
        assert kinds, heading
        seen.update(kinds)
        assert fields == {f.name for k in kinds for f in payloads[k].FIELDS}, heading
        assert must == {f.name for k in kinds for f in payloads[k].REQUIRED}, heading
    assert seen == set(payloads)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_whatever_decode_lets_through_the_consumers_take(data: st.DataObject) -> None:
    """Markers with any valid meta (random values, optional fields present or not, unknown
    keys) through the builder, then its output through the monitors and the recorder: no
    KeyError or TypeError anywhere, and what the builder makes is itself valid."""
    from daq.builder import EventBuilder
    from daq.geometry import load_geometry
    from daq.recorder import Recording
    from monitors.aggregate import MonitorInputError, RunAnalysis
    from monitors.config import MonitorConfig

    geom = load_geometry()
    b = EventBuilder(geom, calibration="c", default_trigger_config=lambda: {"enabled": []})
    out = []
    for seq, kind in enumerate((Kind.RUN_START, Kind.SPILL_START, Kind.SPILL_END,
                                Kind.RUN_STOP)):
        for board in geom.board_names:
            frames = encode(Message(kind, run=1, seq=seq, src=board, board=board,
                                    meta=data.draw(metas(kind))))
            out += b.feed(decode(frames), 0.0)
    out += b.finish(100.0)
    assert [m.kind for m in out] == [Kind.RUN_START, Kind.CONFIG, Kind.SPILL_START,
                                     Kind.SPILL_END, Kind.RUN_STOP, Kind.END_OF_STREAM]
    out = [decode(encode(m)) for m in out]  # the builder's output is valid as it stands
    ra = RunAnalysis(MonitorConfig())
    with tempfile.TemporaryDirectory() as d:
        rec = Recording(Path(d))
        for m in out:
            rec.handle(m, 0.0)
            with contextlib.suppress(MonitorInputError):
                ra.feed(m)
        ra.finish()
        rec.close()


def test_a_features_meta_not_its_kinds_opens_no_spill_in_the_monitors() -> None:
    import numpy as np

    from monitors.aggregate import MonitorInputError, RunAnalysis
    from monitors.config import MonitorConfig
    from monitors.identify import FEATURE_ARRAYS

    arrays = {n: np.zeros((2, 4)[:nd], dt) for n, (dt, nd) in FEATURE_ARRAYS.items()}
    ra = RunAnalysis(MonitorConfig())
    with pytest.raises(MonitorInputError, match="calib_cells"):
        ra.feed(Message(Kind.FEATURES, run=1, spill=1, board="ALL", count=2, arrays=arrays,
                        meta={"slice_index": 0,
                              "calib_cells": {"n": 1, "sum": {"E11": "x"}, "sum2": {}}}))
    assert ra.refused == {"meta": 1} and ra.open_spills == 0
    ra.feed(Message(Kind.FEATURES, run=1, spill=1, seq=1, board="ALL", count=2, arrays=arrays,
                    meta={"slice_index": 0}))
    assert ra.open_spills == 1  # the same message with a good meta is taken
