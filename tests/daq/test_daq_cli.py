"""`na64daq inspect` on a recovered file and `na64daq replay` into a real PULL socket."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zmq
from daq_fragments import Worker

from daq.cli import main
from daq.runfile import RunFileWriter, partial_path
from daq.transport import recv
from daq.wire import Kind


def test_inspect_names_a_recovered_file_and_its_torn_spill(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run000001.na64"
    w = Worker()
    w_ = RunFileWriter(path, run=1, config={}, geometry_hash="g", calibration_hash="c")
    w_.write(w.run_start())
    for sp in range(2):
        for m in w.spill(sp, 3):
            w_.write(m)
    for m in w.spill(2, 3)[:3]:
        w_.write(m)
    w_.flush()
    size = partial_path(path).stat().st_size
    os.truncate(partial_path(path), size - 10)  # the last record is torn
    assert main(["inspect", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["recovered"] and out["torn"] and out["torn_spill"] == 2
    assert out["bytes_dropped"] > 0 and "byte" in out["reason"]
    spills = {s["spill"]: s for s in out["spills"]}
    assert spills[0]["ended"] and spills[1]["ended"] and not spills[2]["ended"]
    assert spills[0]["accepted"] == 15 and spills[0]["slices"] == 3
    assert spills[2]["accepted"] == 5  # one accepted record survived, one was torn
    assert main(["inspect", str(path)]) == 1
    assert "RECOVERED" in capsys.readouterr().out
    w_._f.close()  # type: ignore[union-attr]


def test_replay_command_sends_everything_marked_replay(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from daq_fragments import Board

    from daq.geometry import load_geometry

    path = tmp_path / "raw.na64"
    boards = [Board(load_geometry(), name, seed=i) for i, name in enumerate(("BEAM", "ECAL"))]
    sent = []
    for sp in range(3):
        for b in boards:
            sent += b.spill(sp, 8, 4)
    with RunFileWriter(path, run=1, config={}, geometry_hash="g", calibration_hash="c") as f:
        for m in sent:
            f.write(m)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        assert main(["replay", str(path), "--to", endpoint, "--spills", "1:2",
                     "--speed", "1000", "--no-progress"]) == 0
        got = []
        while pull.poll(1000):
            got.append(recv(pull))
    finally:
        pull.close()
        ctx.term()
    assert all(m.replay for m in got)
    assert {m.spill for m in got if m.kind is Kind.SLICE} == {1, 2}
    assert len(got) == 2 * 2 * (1 + 2 + 1)  # per spill and board: start, 2 slices, end
    out = capsys.readouterr().out
    assert "replayed 16 messages, 16 events" in out and f"all delivered to {endpoint}" in out
    with pytest.raises(SystemExit):
        main(["replay", str(path)])  # --to is required
    assert main(["replay", str(path), "--to", endpoint, "--speed", "fast"]) == 2


def test_replay_refuses_what_a_builder_cannot_take(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Accepted events without board data (a features-only recording), an endpoint without
    a scheme: clear errors, no traceback, nothing sent."""
    path = tmp_path / "run000001.na64"
    w = Worker()
    with RunFileWriter(path, run=1, config={}, geometry_hash="g", calibration_hash="c") as f:
        for m in [w.run_start(), *w.spill(0, 2)]:
            f.write(m)
    assert main(["replay", str(path), "--to", "127.0.0.1:5550"]) == 2
    err = capsys.readouterr().err
    assert "--to='127.0.0.1:5550' is invalid: a ZeroMQ endpoint with its scheme" in err
    assert main(["replay", str(path), "--to", "tcp://127.0.0.1:9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a recorded file whose accepted records carry no board data: nothing can be " \
        "replayed into a builder" in err
