"""`na64daq bench` on the standing system: consecutive runs, the same processes, loss-free."""

from __future__ import annotations

import numpy as np
import pytest

from daq.wire import Kind, Message, decode


def test_a_prepared_message_is_sent_again_as_another_run_with_its_checksums() -> None:
    from daq.bench_beam import prepare

    arr = np.arange(64, dtype="<u2")
    ts = np.arange(64, dtype="<u8")
    start = Message(Kind.RUN_START, run=0, src="BEAM", board="BEAM", meta={"mode": "feature"})
    sl = Message(Kind.SLICE, run=0, spill=0, seq=1, src="BEAM", board="BEAM", first=0,
                 count=64, arrays={"ts": ts, "amp": arr}, meta={"mode": "feature"})
    starts, spill = prepare([("BEAM", start), ("BEAM", sl)])
    assert [p.events for p in starts] == [0] and [p.events for p in spill] == [64]
    p = spill[0]
    again = decode([p.head(7, 3, 12), *p.frames], verify_crc=True)
    assert (again.run, again.spill, again.seq, again.kind) == (7, 3, 12, Kind.SLICE)
    np.testing.assert_array_equal(again.arrays["amp"], arr)
    np.testing.assert_array_equal(again.arrays["ts"], ts)
    # the same frames under another run still carry the CRCs computed once
    assert decode([p.head(8, 0, 1), *p.frames], verify_crc=True).run == 8


def _snap(events: int, spills: int, run: int | None, last: float | None) -> dict:
    return {"t": 0.0, "events": events, "spills": spills, "shed": 0, "lost": 0, "run": run,
            "last_spill_s": last}


def test_each_run_is_measured_between_the_monitor_readings_at_its_gates() -> None:
    from daq.bench import run_figures

    sent = [{"event": "sent", "run": 4, "t0": 100.0, "t_sent": 100.8, "how": "ended",
             "events": 2000, "spills": 2},
            {"event": "sent", "run": 5, "t0": 110.0, "t_sent": 110.8, "how": "ended",
             "events": 2000, "spills": 2}]
    before = {4: _snap(0, 0, None, None), 5: _snap(2000, 2, 4, 101.0)}
    final = _snap(3990, 4, 5, 112.0)
    control = [{"run": 4, "events": 2000, "spills": 2, "started_at": 99.9, "stopped_at": 101.1}]
    figs = run_figures(sent, before, final, control, {4: {"events_per_s": 4000.0}})
    one, two = figs
    assert one["events_per_s"] == pytest.approx(2000.0) and one["ratio"] == pytest.approx(0.5)
    assert one["lost_events"] == 0 and one["run_control"]["stopped_at"] == 101.1
    assert two["processed"] == 1990 and two["lost_events"] == 10  # sent - processed - shed
    assert two["events_per_s"] == pytest.approx(1000.0) and "ratio" not in two
    # the monitor never closed run 5's last spill (its gauge names run 4): no rate
    late = run_figures(sent, before, _snap(3990, 3, 4, 101.0), [], {})
    assert late[1]["events_per_s"] is None


def test_monitor_readings_take_live_series_only() -> None:
    from daq.bench import monitor_snapshot

    s = {'na64_spills_total{closed="complete",source="live"}': 3.0,
         'na64_spills_total{closed="forced",source="live"}': 1.0,
         'na64_spills_total{closed="complete",source="replay"}': 9.0,
         'na64_events_total{source="live"}': 1234.0,
         'na64_monitor_lost_events_total{source="live"}': 2.0,
         'na64_run_number{source="live"}': 6.0,
         'na64_last_spill_timestamp_seconds{source="live"}': 55.5}
    snap = monitor_snapshot(s, 1.0)
    assert snap == {"t": 1.0, "spills": 4, "events": 1234, "shed": 0, "lost": 2, "run": 6,
                    "last_spill_s": 55.5}


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(240)
def test_the_standing_system_takes_consecutive_runs_loss_free_with_the_same_processes(
) -> None:
    from daq.bench import pipeline

    p = pipeline("feature", 20_000, 2, runs=3, bare=True)
    runs = p["runs"]
    first = runs[0]["run"]
    assert p["run_numbers"] == [first, first + 1, first + 2]
    assert p["same_processes"], p["pids"]
    assert all(code == 0 for code in p["exits"].values()), p["exits"]
    for r in runs:
        assert r["events"] > 35_000 and r["spills"] == 2 and r["how"] == "ended", r
        assert r["processed"] == r["events"] and r["shed"] == 0, r
        assert r["lost_events"] == 0 and r["lost_monitor"] == 0 and r["spills_closed"] == 2, r
        assert r["run_control"]["events"] == r["events"], r  # what run control recorded
        assert r["events_per_s"] > 0 and r["zmq_events_per_s"] > 0 and r["ratio"] > 0, r
        assert r["t0"] < r["t_sent"] <= r["t_last_spill"], r
    assert p["lost_events"] == 0
    assert set(p["peak_rss_bytes"]) >= {"builder", "recorder", "monitor", "trigger-0",
                                        "trigger-1", "frontend", "control"}
    assert all(b > 10 * 2**20 for b in p["peak_rss_bytes"].values()), p["peak_rss_bytes"]
