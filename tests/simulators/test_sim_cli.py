"""`na64daq simulate`: run files (raw and truth) and streams, with faults from the command line."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from daq.cli import main
from daq.errors import WireError
from daq.geometry import load_geometry, reco_window
from daq.hits import WAVE_HITS, check
from daq.runfile import RunFileReader
from daq.wire import Kind, Message, decode
from tests.conftest import free_tcp_port

BASE = ["simulate", "--generated-s", "0.004", "--seed", "3", "--quiet"]


def test_writes_raw_and_truth_run_files_with_file_faults(tmp_path: Path) -> None:
    out, truth = tmp_path / "run.raw", tmp_path / "run.truth"
    rc = main([*BASE, "--spills", "3", "--slice-events", "1024", "--out", str(out),
               "--truth", str(truth), "--fault-ramp", "1.0", "--fault-stop", "HCAL:2:0.5",
               "--fault-empty", "VETO:1", "--fault-duplicate", "0.3",
               "--fault-reorder", "0.3"])
    assert rc == 0
    raw = list(RunFileReader(out))
    tru = list(RunFileReader(truth))
    assert RunFileReader(out).header["config"]["simulation"]["mode"] == "feature"
    ends = {(m.src, m.spill): m.meta["events"] for m in raw if m.kind is Kind.SPILL_END}
    beam = np.array([ends[("BEAM", s)] for s in range(3)], float)
    # intensity ramp 1 + s: 5000 (1 + s) +- 5 sqrt
    expect = 6e6 * 0.004 / 4.8 * (1 + np.arange(3))
    assert (np.abs(beam - expect) < 5 * np.sqrt(expect)).all()
    assert ("HCAL", 2) not in ends and ("HCAL", 1) in ends
    veto = [m for m in raw if m.src == "VETO" and m.kind is Kind.SLICE]
    assert veto and all(list(m.arrays) == ["ts"] for m in veto)
    ecal = [(m.seq, m.first) for m in raw if m.src == "ECAL" and m.kind is Kind.SLICE]
    assert len(set(ecal)) < len(ecal), "duplicates"
    firsts = [f for _, f in dict.fromkeys(ecal)]
    assert firsts != sorted(firsts), "reordered"
    t_events = sum(m.count for m in tru if m.kind is Kind.SLICE)
    assert t_events == int(beam.sum())
    assert {m.src for m in tru} == {"truth"}


def test_streams_to_an_endpoint_with_corrupted_frames(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = free_tcp_port()
    pull.bind(f"tcp://127.0.0.1:{port}")
    pull.setsockopt(zmq.RCVTIMEO, 60_000)
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(main(
        [*BASE, "--spills", "1", "--to", f"tcp://127.0.0.1:{port}", "--fault-corrupt", "0.3",
         "--slice-events", "512", "--truth", str(tmp_path / "t.truth")])))
    t.start()
    good: list[Message] = []
    bad: list[WireError] = []
    try:
        eos = 0
        while eos < 5:
            try:
                m = decode(pull.recv_multipart())
            except WireError as e:
                bad.append(e)
                continue
            good.append(m)
            eos += m.kind is Kind.END_OF_STREAM
    finally:
        t.join(60)
        pull.close(linger=0)
        ctx.term()
    assert rc == [0]
    assert bad and {e.reason for e in bad} == {"checksum"}
    assert {m.src for m in good} == {"BEAM", "SRD", "ECAL", "VETO", "HCAL"}
    truth = list(RunFileReader(tmp_path / "t.truth"))
    beam_end = next(m for m in good if m.src == "BEAM" and m.kind is Kind.SPILL_END)
    assert sum(m.count for m in truth if m.kind is Kind.SLICE) == beam_end.meta["events"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--out", "x.raw", "--fault-corrupt", "0.1"], "--to"),
    (["--out", "x.raw", "--intensity", "-5"], "intensity"),
    (["--out", "x.raw", "--fault-stop", "ECAL:1"], "BOARD:SPILL:FRACTION"),
    (["--out", "x.raw", "--fault-empty", "NOPE:0.1"], "NOPE"),
    (["--out", "x.raw", "--set", "momentum_spread=3"], "momentum_spread"),
    (["--out", "x.raw", "--zs-adc", "-1"], "zs_adc"),
])
def test_bad_options_are_refused_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch, args: list,
                                                  needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*BASE, *args]) == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing written"


def test_waveform_mode_run_file_follows_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "wave.raw"
    assert main([*BASE, "--spills", "1", "--mode", "waveform", "--generated-s", "0.001",
                 "--out", str(out)]) == 0
    msgs = list(RunFileReader(out))
    starts = [m for m in msgs if m.kind is Kind.RUN_START]
    assert len(starts) == 5 and all(m.meta["mode"] == "waveform" for m in starts)
    nch = {"BEAM": 6, "SRD": 3, "ECAL": 60, "VETO": 6, "HCAL": 36}
    slices = [m for m in msgs if m.kind is Kind.SLICE]
    assert slices and all(m.first % 1024 == 0 for m in slices)
    for m in slices:
        w = m.arrays["wave"]
        assert w.dtype == np.int16 and w.shape == (m.count, 32, nch[m.board])
        assert m.arrays["ts"].dtype == np.int64 and (np.diff(m.arrays["ts"]) >= 0).all()
        assert w.min() >= 0 and w.max() <= 4095


def test_zero_suppressed_waveform_run_file(tmp_path: Path) -> None:
    out = tmp_path / "zs.raw"
    assert main([*BASE, "--spills", "1", "--mode", "waveform", "--zero-suppress",
                 "--zs-adc", "8", "--generated-s", "0.001", "--out", str(out)]) == 0
    nch = {"BEAM": 6, "SRD": 3, "ECAL": 60, "VETO": 6, "HCAL": 36}
    geom = load_geometry()
    slices = [m for m in RunFileReader(out) if m.kind is Kind.SLICE]
    assert slices
    for m in slices:
        assert m.meta == {"mode": "waveform", "zs_adc": 8.0}
        assert list(m.arrays) == ["ts", "nhit", "hit_ch", "hit_wave"]
        assert check(m.arrays, m.count, nch[m.board], WAVE_HITS, samples=32) > 0
        # the board's reconstruction window, its largest sample over the default pedestal
        w0, w1 = reco_window(geom.board(m.board), geom.detector)
        w = m.arrays["hit_wave"].astype(np.float64)
        assert (w[:, w0:w1].max(axis=1) - geom.detector.pedestal >= 8.0).all()


def test_default_size_is_sensible_and_said_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example (no --generated-s) simulates the first 0.1 s of each spill, as
    the demo does, and says how large the file will be before it starts; the estimate is
    measured on one slice and lands within a few per cent of what is written."""
    out = tmp_path / "run.na64"
    assert main(["simulate", "--spills", "2", "--intensity", "6e5", "--seed", "2",
                 "--mode", "feature", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    first, *rest = text.splitlines()
    assert first.startswith("simulate: 2 spill(s) of ~12,500 events (the first 0.1 s of each "
                            "4.8 s spill")
    estimate_mb = float(first.split("about ")[1].split(" MB")[0])
    size = out.stat().st_size
    assert estimate_mb * 1e6 == pytest.approx(size, rel=0.05)
    events = int(rest[0].split(", ")[1].split()[0])
    assert events == pytest.approx(2 * 6e5 * 0.1 / 4.8, rel=0.05)
    assert rest[-1].endswith("MB)")
