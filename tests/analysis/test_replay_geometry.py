"""Replay of a run file recorded with another geometry than the receiving system's.

The file: a raw run simulated with the default geometry but two ECAL channels swapped on
the wire (MAIN_0_0 where MAIN_2_2 was): the same boards and channel counts, so every slice
fits the installed geometry, and without a check its events would be built and decided
with the spot cell read as a corner. Into the standing system the builder refuses the
replay's boards (hash_mismatch, decision 0024) and nothing is recorded; `na64daq replay
--config` refuses the file before it opens a replay run, naming both hashes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from analysis_files import _stack

from daq.cli import main
from daq.geometry import Geometry, load_calibration, load_geometry
from daq.markers import RunStop
from daq.replay import replay
from daq.runfile import RunFileReader, RunFileWriter
from daq.wire import Kind

pytestmark = pytest.mark.slow  # a standing system and real sockets

DEFAULT = Path(__file__).resolve().parents[2] / "daq" / "geometry.toml"
A = '{ name = "MAIN_0_0", group = "MAIN", x = 0, y = 0 }'
B = '{ name = "MAIN_2_2", group = "MAIN", x = 2, y = 2 }'


def _swapped(tmp: Path) -> Path:
    """The default geometry with MAIN_0_0 and MAIN_2_2 swapped on the wire."""
    text = DEFAULT.read_text()
    assert text.count(A) == text.count(B) == 1
    path = tmp / "swapped.toml"
    path.write_text(text.replace(A, "@").replace(B, A).replace("@", B))
    return path


def _raw_file(tmp: Path, geom: Geometry, calibration_hash: str | None = None) -> Path:
    """A raw run of `geom` as `na64daq simulate --out` writes it (its header naming
    `calibration_hash`, default the calibration's)."""
    from simulators.config import SimConfig
    from simulators.frontend import FrontEnds
    from simulators.generator import Simulator

    cal = load_calibration(geom)
    sim = Simulator(SimConfig.parse({"generated_s": 0.002, "seed": 4, "run": 77}), geom, cal)
    path = tmp / f"raw-{geom.hash}-{calibration_hash}.na64"
    with RunFileWriter(path, run=77, config={}, geometry_hash=geom.hash,
                       calibration_hash=calibration_hash or cal.hash) as w:
        for em in FrontEnds(sim, spills=2).run():
            w.write(em.msg)
    return path


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("other-geometry")
    geom = load_geometry(_swapped(tmp))
    assert geom.hash != load_geometry().hash
    return _raw_file(tmp, geom), geom.hash


def test_the_standing_system_builds_and_records_nothing_of_it(
        other: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A replay run of the file: every message sent is refused as hash_mismatch, the
    builder's warning names both hashes, and run control's stop closes the run at once
    with no event (before, every event was built with the swapped cells; and a run no
    board's record opened was never closed downstream: the stop failed after 120 s); a
    live run afterwards is built as usual."""
    from daq.app import LocalStack

    path, theirs = other
    ours = load_geometry().hash

    async def run() -> tuple:
        async with LocalStack(_stack(tmp_path, "geom", generated_s=0.001, seed=3),
                              metrics=False) as stack:
            await stack.take_run(spills=1)
            before = list(stack.recorder.rec.files)
            reply = await stack.start_run(replay=True, run_type="test")
            res = await replay(path, stack.cfg.endpoints.builder_in, run=int(reply["run"]))
            stop = await stack.stop_run("replay sent")
            refused = dict(stack.builder.builder.stats["replay"].refused)
            new = [f for f in stack.recorder.rec.files if f not in before]
            live = await stack.take_run(spills=1)
            return res, stop, refused, new, live

    with caplog.at_level(logging.WARNING):
        res, stop, refused, new, live = asyncio.run(run())
    assert res.delivered and res.messages > 0, res.reason
    assert refused.get("hash_mismatch") == res.messages, refused
    assert stop.get("ok") and not stop.get("events"), stop
    # the replay run's file holds its run_start and run_stop only, the stop saying why
    [f] = new
    msgs = list(RunFileReader(f))
    assert f.name.startswith("replay-run") and [m.kind for m in msgs] == [Kind.RUN_START,
                                                                          Kind.RUN_STOP]
    stopped = RunStop.of(msgs[-1])
    assert stopped.events == 0 and "hash_mismatch" in stopped.reason, stopped
    warned = [r.getMessage() for r in caplog.records if "hash_mismatch" in r.getMessage()]
    assert warned and all(theirs in w and ours in w for w in warned), warned
    assert int(live.get("events") or 0) > 0, live


def _topology(tmp: Path) -> Path:
    """A topology with the installed geometry and calibration whose broker does not exist:
    a replay that asked run control for a run would fail (no credentials, no broker)."""
    topo = tmp / "topology.toml"
    topo.write_text(f'run_dir = "{tmp / "runs"}"\nmqtt = "mqtt://127.0.0.1:9"\n')
    return topo


def test_replay_config_refuses_the_file_naming_both_hashes(
        other: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`na64daq replay FILE --config TOPOLOGY`: an error naming the file's and the
    topology's geometry hashes, before run control is asked for a replay run (the broker
    named in the topology does not exist: asking it would fail otherwise)."""
    path, theirs = other
    assert main(["replay", str(path), "--config", str(_topology(tmp_path)),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert theirs in err and load_geometry().hash in err, err
    assert "geometry" in err and "nothing was sent" in err, err


def test_replay_config_of_another_calibration_goes_on_with_a_note(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another calibration is applied to old data on purpose (decision 0024): the replay
    goes on to ask run control (and fails there, as no broker exists), after a note naming
    both calibration hashes."""
    geom = load_geometry()
    path = _raw_file(tmp_path, geom, calibration_hash="0123456789abcdef")
    assert main(["replay", str(path), "--config", str(_topology(tmp_path)),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "note:" in err and "0123456789abcdef" in err, err
    assert load_calibration(geom).hash in err and "nothing was sent" not in err, err
