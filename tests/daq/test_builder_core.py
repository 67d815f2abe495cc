"""The sans-I/O event builder: alignment, timeouts, policies, sequence accounting, bounds."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from daq_fragments import Board

from daq import hits
from daq.builder import BuilderConfig, EventBuilder
from daq.config import content_hash
from daq.errors import ConfigError
from daq.geometry import load_geometry
from daq.inspect import summarize
from daq.runfile import RunFileWriter
from daq.wire import Kind, Message

GEOM = load_geometry()
NAMES = GEOM.board_names
CFG = {"thresholds": {"ecal_max": 90.0}}


def _builder(**kw: object) -> EventBuilder:
    return EventBuilder(GEOM, BuilderConfig.parse({"timeout_s": 1.0, **kw}),
                        calibration="calhash", default_trigger_config=lambda: dict(CFG))


def _boards(mode: str = "feature", zero_suppress: bool = False) -> dict[str, Board]:
    return {n: Board(GEOM, n, mode=mode, seed=i, zero_suppress=zero_suppress)
            for i, n in enumerate(NAMES)}


def _first_events(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """A fragment's arrays cut to its first n events (hits included)."""
    nhit, h = hits.select(arrays["nhit"], {k: v for k, v in arrays.items()
                                           if hits.is_hit_array(k)}, np.arange(n))
    return {"ts": arrays["ts"][:n].copy(), "nhit": nhit, **h}


def _interleave(boards: dict[str, Board], spill: int, events: int, se: int = 32,
                skip: dict[str, int] | None = None) -> list[Message]:
    """Messages of one spill, board streams interleaved slice by slice, as on the wire.
    `skip[board] = k`: that board stops after k slices (no more slices, no spill_end)."""
    per = {n: b.spill(spill, events, se) for n, b in boards.items()}
    if skip:
        for n, k in skip.items():
            per[n] = per[n][: 1 + k]
    out: list[Message] = []
    for i in range(max(len(v) for v in per.values())):
        out += [v[i] for v in per.values() if i < len(v)]
    return out


def _feed(b: EventBuilder, msgs: list[Message], now: float = 0.0) -> list[Message]:
    out: list[Message] = []
    for m in msgs:
        out += b.feed(m, now)
    return out


def _kinds(out: list[Message], kind: Kind) -> list[Message]:
    return [m for m in out if m.kind is kind]


def test_complete_events_in_complete_events_out_zero_copy() -> None:
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 100) + _interleave(boards, 1, 70)
    out = _feed(b, msgs)
    slices = _kinds(out, Kind.SLICE)
    assert [s.count for s in slices] == [32, 32, 32, 4, 32, 32, 6]
    assert [s.meta["slice_index"] for s in slices] == [0, 1, 2, 3, 0, 1, 2]
    assert all(not s.arrays["missing"].any() for s in slices)
    ends = _kinds(out, Kind.SPILL_END)
    assert [(e.spill, e.meta["events"], e.meta["slices"]) for e in ends] == [(0, 100, 4),
                                                                           (1, 70, 3)]
    assert all(e.meta["incomplete"] == {} and e.meta["gaps"] == {} for e in ends)
    assert ends[0].meta["scalers"]["beam"] == 100
    # board arrays are forwarded, not copied
    src = {(m.board, m.spill, m.first): m for m in msgs if m.kind is Kind.SLICE}
    s0 = slices[0]
    assert s0.arrays["ECAL.hit_amp"] is src[("ECAL", 0, 0)].arrays["hit_amp"]
    assert s0.arrays["ECAL.nhit"] is src[("ECAL", 0, 0)].arrays["nhit"]
    assert s0.arrays["ts"] is src[("BEAM", 0, 0)].arrays["ts"]
    assert s0.meta["cfg"] == content_hash(CFG) and s0.meta["trigger_config"] == CFG
    assert s0.meta["calib"] == "calhash" and "shadow_config" not in s0.meta  # none: absent
    assert [m.seq for m in out] == list(range(len(out)))
    assert all(m.src == "builder" for m in out)
    assert [m.kind for m in out[:2]] == [Kind.CONFIG, Kind.SPILL_START]
    st = b.stats["live"]
    assert st.events == 170 and st.slices == 7 and sum(st.incomplete.values()) == 0
    assert st.fragments["HCAL"] == 7 and b.pending_events == 0


def test_default_trigger_config_comes_from_trigger_package() -> None:
    from trigger.config import TriggerConfig

    b = EventBuilder(GEOM)
    cfg, h = b.active_config
    assert cfg == TriggerConfig().model_dump(mode="json") and h == content_hash(cfg)


def test_board_stopped_mid_spill_gives_exact_flagged_events() -> None:
    b, boards = _builder(), _boards()
    out = _feed(b, _interleave(boards, 0, 100, skip={"HCAL": 1}), now=0.0)
    assert len(_kinds(out, Kind.SLICE)) == 1  # slice 0 complete, the rest waits
    assert b.pending_events == 68
    assert _kinds(b.poll(0.5), Kind.SLICE) == []  # before the timeout nothing moves
    out = b.poll(1.0)
    slices = _kinds(out, Kind.SLICE)
    assert [s.first for s in slices] == [32, 64, 96]
    bit = 1 << NAMES.index("HCAL")
    assert all((s.arrays["missing"] == bit).all() for s in slices)
    assert all("HCAL.nhit" not in s.arrays for s in slices)  # missing: read nothing
    (end,) = _kinds(out, Kind.SPILL_END)
    assert end.meta["incomplete"] == {"HCAL": 68} and end.meta["events"] == 100
    assert end.meta["complete"] == 32  # the live part of the spill
    assert b.stats["live"].incomplete == {"HCAL": 68}
    assert b.pending_events == 0


@pytest.mark.parametrize("zero_suppress", [False, True])
def test_missing_board_in_waveform_mode_is_absent(zero_suppress: bool) -> None:
    b, boards = _builder(), _boards("waveform", zero_suppress)
    _feed(b, _interleave(boards, 0, 40, skip={"VETO": 0}))
    (s, _) = _kinds(b.poll(2.0), Kind.SLICE)
    assert not any(k.startswith("VETO.") for k in s.arrays)
    assert (s.arrays["missing"] == 1 << NAMES.index("VETO")).all()
    layout = {"ECAL.nhit", "ECAL.hit_ch", "ECAL.hit_wave"} if zero_suppress else {"ECAL.wave"}
    assert {k for k in s.arrays if k.startswith("ECAL.")} == layout


def test_reordered_and_duplicated_slices_are_handled_and_counted() -> None:
    ref, b = _builder(), _builder()
    msgs = _interleave(_boards(), 0, 200)
    want = _kinds(_feed(ref, msgs), Kind.SLICE)
    rng = random.Random(3)
    body = msgs[len(NAMES):-len(NAMES)]  # keep spill markers in place, shuffle the slices
    dups = rng.sample(body, 5)
    body = body + dups
    rng.shuffle(body)
    got = _kinds(_feed(b, msgs[:len(NAMES)] + body + msgs[-len(NAMES):]), Kind.SLICE)
    key = sorted((s.first, s.count) for s in got)
    assert key == sorted((s.first, s.count) for s in want)
    by_first = {s.first: s for s in got}
    for w in want:
        for k in ("ECAL.nhit", "ECAL.hit_ch", "ECAL.hit_amp"):
            assert np.array_equal(by_first[w.first].arrays[k], w.arrays[k])
    st = b.stats["live"]
    assert sum(st.duplicates.values()) == 5
    assert sum(st.out_of_order.values()) > 0
    assert sum(st.seq_gaps.values()) == 0 and sum(st.incomplete.values()) == 0


def test_lost_message_is_a_counted_gap_and_flagged_event() -> None:
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 96)
    lost = next(m for m in msgs if m.board == "SRD" and m.kind is Kind.SLICE and m.first == 32)
    _feed(b, [m for m in msgs if m is not lost])
    out = b.poll(1.0)
    (end,) = _kinds(out, Kind.SPILL_END)
    assert end.meta["gaps"] == {"SRD": 1} and end.meta["incomplete"] == {"SRD": 32}
    assert b.stats["live"].seq_gaps == {"SRD": 1}


def test_skip_spill_policy_drops_the_rest_of_the_spill() -> None:
    b, boards = _builder(policy="skip_spill"), _boards()
    _feed(b, _interleave(boards, 0, 100, skip={"ECAL": 1}))
    out = b.poll(1.0)
    assert _kinds(out, Kind.SLICE) == []
    (end,) = _kinds(out, Kind.SPILL_END)
    assert end.meta["skipped"] and end.meta["slices"] == 1 and end.meta["events"] == 32
    assert b.stats["live"].skipped == 68
    # the next spill builds normally
    out = _feed(b, _interleave(boards, 1, 64, skip=None))
    assert sum(s.count for s in _kinds(out, Kind.SLICE)) == 64


def test_stop_run_policy_ends_the_run_naming_the_board() -> None:
    b, boards = _builder(policy="stop_run"), _boards()
    _feed(b, _interleave(boards, 0, 100, skip={"BEAM": 2}))
    out = b.poll(1.0)
    assert b.stopped and "BEAM" in b.stop_reason
    assert [m.kind for m in out][-2:] == [Kind.SPILL_END, Kind.RUN_STOP]
    assert _kinds(out, Kind.SLICE)[0].arrays["missing"].all()
    assert _feed(b, _interleave(boards, 1, 32)) == []


def test_config_change_applies_at_the_next_spill() -> None:
    b, boards = _builder(), _boards()
    new = {"thresholds": {"ecal_max": 80.0}}
    spill0 = _interleave(boards, 0, 64)
    out = _feed(b, spill0[:8])  # the change arrives during spill 0
    h = b.set_trigger_config(new, who="shifter")
    b.set_shadow_config({"shadow": 1})
    out += _feed(b, spill0[8:])
    out += _feed(b, _interleave(boards, 1, 64))
    s1 = _kinds(out, Kind.SLICE)
    assert all(s.meta["cfg"] == content_hash(CFG) for s in s1 if s.spill == 0)
    assert all(s.meta["cfg"] == h and s.meta["shadow_config"] == {"shadow": 1}
               for s in s1 if s.spill == 1)
    cfgs = _kinds(out, Kind.CONFIG)
    assert [(c.spill, c.meta["who"]) for c in cfgs] == [(0, "default"), (1, "shifter")]
    i = out.index(cfgs[1])
    assert out[i + 1].kind is Kind.SPILL_START and out[i + 1].meta["cfg"] == h


def test_bad_fragments_are_refused_and_counted() -> None:
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 32)
    bad = next(m for m in msgs if m.board == "VETO" and m.kind is Kind.SLICE)
    bad.arrays["hit_amp"] = bad.arrays["hit_amp"][:-1].copy()  # one hit short of nhit
    stranger = Message(kind=Kind.SLICE, src="GHOST", board="GHOST", count=1,
                       arrays={"ts": np.zeros(1, np.int64)}, meta={"mode": "feature"})
    _feed(b, [*msgs, stranger])
    (s,) = _kinds(b.poll(1.0), Kind.SLICE)
    assert s.arrays["missing"].all()
    assert b.stats["live"].decode_errors == {"VETO": 1, "unknown": 1}


def test_empty_fragment_is_counted_not_missing() -> None:
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 32)
    zs = next(m for m in msgs if m.board == "SRD" and m.kind is Kind.SLICE)
    zs.arrays = {"ts": zs.arrays["ts"]}
    (s,) = _kinds(_feed(b, msgs), Kind.SLICE)
    assert not s.arrays["missing"].any() and "SRD.nhit" not in s.arrays
    assert b.stats["live"].empty == {"SRD": 1}


def test_pending_memory_is_bounded() -> None:
    b, boards = _builder(max_pending_events=100), _boards()
    msgs = _interleave(boards, 0, 3200, skip={"SRD": 0})
    peak = 0
    for m in msgs:
        b.feed(m, 0.0)
        peak = max(peak, b.pending_events)
    assert peak <= 100 + 32
    assert b.stats["live"].incomplete["SRD"] >= 3200 - 132


def test_pending_memory_is_bounded_in_bytes() -> None:
    """Waveform fragments are ~4 kB an event: a bound in events alone would let GBs wait."""
    bound = 1 << 20
    b, boards = _builder(max_pending_events=10**7, max_pending_bytes=bound), \
        _boards("waveform")
    msgs = _interleave(boards, 0, 3200, skip={"SRD": 0})
    biggest = max(m.nbytes for m in msgs)
    peak = 0
    for m in msgs:
        b.feed(m, 0.0)
        peak = max(peak, b.pending_bytes)
    assert bound - len(NAMES) * biggest < peak <= bound  # reached, never passed after a feed
    assert b.pending_events < 3200 // 4  # the events bound was nowhere near
    # every event is either built with SRD flagged missing, or still waiting for it
    assert b.stats["live"].incomplete["SRD"] + b.pending_events == 3200
    # what a complete spill leaves pending: nothing, in events and in bytes
    b2 = _builder(max_pending_bytes=bound)
    _feed(b2, _interleave(_boards("waveform"), 0, 640))
    assert b2.pending_bytes == 0 and b2.pending_events == 0
    assert sum(b2.stats["live"].incomplete.values()) == 0


def test_shedding_counts_dead_time() -> None:
    b, boards = _builder(), _boards()
    b.shedding = True
    out = _feed(b, _interleave(boards, 0, 100))
    assert _kinds(out, Kind.SLICE) == []
    (end,) = _kinds(out, Kind.SPILL_END)
    assert end.meta["shed"] == 100 and end.meta["slices"] == 0
    assert end.meta["complete"] == 0  # shed events are dead, whatever boards they had
    assert b.stats["live"].shed == 100


def test_replay_is_kept_apart() -> None:
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 64)
    for m in msgs:
        m.replay = True
    out = _feed(b, msgs)
    assert out and all(m.replay for m in out)
    assert b.stats["replay"].events == 64 and b.stats["live"].events == 0


def test_finish_flushes_and_ends_the_stream() -> None:
    b, boards = _builder(), _boards()
    _feed(b, _interleave(boards, 0, 64, skip={"HCAL": 1}))
    out = b.finish(0.1)
    assert [m.kind for m in out][-3:] == [Kind.SPILL_END, Kind.RUN_STOP, Kind.END_OF_STREAM]
    assert out[-2].meta["events"] == 64


def test_config_bounds_are_named() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        BuilderConfig.parse({"timeout_s": -1})
    with pytest.raises(ConfigError, match="policy"):
        BuilderConfig.parse({"policy": "ignore"})


def test_spill_nobody_ended_closes_once_the_run_moves_on() -> None:
    b, boards = _builder(), _boards()
    spill0 = [m for m in _interleave(boards, 0, 64) if m.kind is not Kind.SPILL_END]
    _feed(b, spill0, now=0.0)
    assert _kinds(b.poll(5.0), Kind.SPILL_END) == []  # alone, it may still be ending
    _feed(b, _interleave(boards, 1, 64)[:5], now=5.0)
    (end,) = _kinds(b.poll(5.0), Kind.SPILL_END)
    assert end.spill == 0 and end.meta["events"] == 64 and end.meta["board_events"] == {}


def test_short_fragment_flags_only_the_events_it_lacks() -> None:
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 32)
    short = next(m for m in msgs if m.board == "VETO" and m.kind is Kind.SLICE)
    i = msgs.index(short)
    msgs[i] = Message(kind=Kind.SLICE, run=short.run, spill=0, seq=short.seq, src="VETO",
                      board="VETO", first=0, count=20,
                      arrays=_first_events(short.arrays, 20), meta=short.meta)
    (s,) = _kinds(_feed(b, msgs), Kind.SLICE)
    bit = 1 << NAMES.index("VETO")
    assert (s.arrays["missing"][:20] == 0).all() and (s.arrays["missing"][20:] == bit).all()
    assert np.array_equal(s.arrays["VETO.nhit"][:20], short.arrays["nhit"][:20])
    assert not s.arrays["VETO.nhit"][20:].any()  # the events it lacks have no hits
    n = int(short.arrays["nhit"][:20].sum())
    assert np.array_equal(s.arrays["VETO.hit_amp"], short.arrays["hit_amp"][:n])
    assert b.stats["live"].incomplete == {"VETO": 12}


def test_spill_end_counts_the_complete_events_once_whatever_boards_lack_them(
        tmp_path: Path) -> None:
    """Two boards short in the same slice: the per-board counts overlap, `complete` (what
    the live time is made of, docs/monitors.md) counts each event once, as `missing` does;
    so does `inspect` of the built file."""
    b, boards = _builder(), _boards()
    msgs = _interleave(boards, 0, 64)
    for board, have in (("VETO", 20), ("SRD", 25)):
        frag = next(m for m in msgs if m.board == board and m.kind is Kind.SLICE)
        msgs[msgs.index(frag)] = Message(
            kind=Kind.SLICE, run=frag.run, spill=0, seq=frag.seq, src=board, board=board,
            first=0, count=have, arrays=_first_events(frag.arrays, have), meta=frag.meta)
    out = _feed(b, msgs)
    (end,) = _kinds(out, Kind.SPILL_END)
    assert end.meta["incomplete"] == {"VETO": 12, "SRD": 7}
    flagged = sum(int(np.count_nonzero(s.arrays["missing"] == 0))
                  for s in _kinds(out, Kind.SLICE))
    assert end.meta["complete"] == flagged == 20 + 32
    path = tmp_path / "built.na64"
    with RunFileWriter(path, run=1, config={}, geometry_hash=GEOM.hash,
                       calibration_hash="calhash") as w:
        for m in out:
            w.write(m)
    (spill,) = summarize(path).spills
    assert spill.incomplete == 64 - flagged  # not 12 + 7


def test_built_slices_go_out_with_the_checksums_their_fragments_came_with() -> None:
    """Wire v2: the builder forwards the CRCs it verified instead of reading the bytes again;
    each is the right one for its array, and a padded array gets a fresh one."""
    import crc32c

    from daq.wire import checksums, decode, encode

    boards = _boards()
    msgs = _interleave(boards, 0, 64)
    cut = next(i for i, m in enumerate(msgs) if m.kind is Kind.SLICE and m.board == "VETO")
    short = msgs[cut]  # VETO's first fragment arrives with half its events
    msgs[cut] = Message(Kind.SLICE, run=short.run, spill=0, seq=short.seq, src="VETO",
                        board="VETO", first=short.first, count=short.count // 2,
                        arrays=_first_events(short.arrays, short.count // 2),
                        meta=short.meta)
    received = [decode(encode(m)) for m in msgs]  # as the builder's socket gives them
    built = [m for m in _feed(_builder(), received) if m.kind is Kind.SLICE]
    assert len(built) == 2
    for m in built:
        frames = encode(m)[1:]
        assert checksums(m) == [crc32c.crc32c(f) for f in frames]
        assert decode(encode(m)).count == m.count
    first = built[0]
    assert "VETO.nhit" not in first.crcs  # padded to the slice: a new array
    assert "missing" not in first.crcs  # made by the builder
    assert {"ts", "ECAL.nhit", "ECAL.hit_amp", "VETO.hit_ch"} <= set(first.crcs)
    assert all(first.crcs[k][0] is first.arrays[k] for k in first.crcs)


def test_a_restarted_builder_resumes_the_active_config_from_its_first_slice() -> None:
    # run control had made `new` active; the builder was restarted in the middle of spill 0
    # (it joins on a slice): `new` applies at once, not from spill 1 (what run control's
    # `set ... at_once` does at the restarted builder's hello)
    new = {"thresholds": {"ecal_max": 55.0}}
    b, boards = _builder(), _boards()
    activated: list[object] = []
    b.on_activate = lambda *a: activated.append(a)
    b.resume_trigger_config(new, "expert")
    spill0 = _interleave(boards, 0, 64)
    joined = [m for m in spill0 if m.kind is not Kind.SPILL_START]  # started before us
    out = _feed(b, joined) + _feed(b, _interleave(boards, 1, 64))
    slices = _kinds(out, Kind.SLICE)
    assert {s.spill for s in slices} == {0, 1}
    assert all(s.meta["trigger_config"] == new for s in slices)
    assert [(c.spill, c.meta["who"]) for c in _kinds(out, Kind.CONFIG)] == [(0, "expert")]
    starts = _kinds(out, Kind.SPILL_START)
    assert [(s.spill, s.meta["resumed"]) for s in starts] == [(0, True), (1, False)]
    assert activated == []  # nothing newly activated: it was active before
