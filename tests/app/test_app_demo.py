"""`na64daq demo`, `up` and the benchmark's pipeline: the whole system runs and loses nothing."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest

from daq.cli import main
from daq.runfile import RunFileReader
from tests.conftest import free_tcp_ports


def test_demo_runs_spills_and_records_them(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "--spills", "2", "--generated-s", "0.02", "--no-live", "--json",
               "--run-dir", str(tmp_path), "--run", "7", "--seed", "5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == 7 and [s["spill"] for s in out["spills"]] == [0, 1]
    rate = 6e6 / 4.8
    for s in out["spills"]:
        assert s["events"] > 0.9 * rate * 0.02  # Poisson(25000): far inside
        assert s["incomplete_events"] == 0 and s["live_time_ratio"] == 1.0
        veto = s["veto_efficiency"]
        # the zero-threshold efficiency is the pileup expectation (docs/monitors.md)
        expect = math.exp(-rate * 50e-9)
        half = veto["high"] - veto["low"]
        assert abs(veto["value"] - expect) < 4 * half
    [path] = out["files"]
    reader = RunFileReader(path)
    kinds = [m.kind.value for m in reader]
    assert reader.report.closed_cleanly and not reader.report.torn
    assert kinds[0] == "run_start" and kinds[-1] == "run_stop"
    assert sorted(reader.report.spills) == [0, 1]
    assert all(sp.complete for sp in reader.report.spills.values())
    recorded = sum(m.count for m in RunFileReader(path) if m.kind.value == "accepted")
    assert recorded == sum(s["accepted"] for s in out["spills"])


def _topology(tmp_path: Path, spills: int) -> Path:
    p = free_tcp_ports(10, block=True)  # p[8], p[9]: the two trigger workers' /metrics
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp_path / "runs"}"\nworkers = 2\n[endpoints]\n'
        f'builder_in = "tcp://127.0.0.1:{p[0]}"\nbuilder_out = "tcp://127.0.0.1:{p[1]}"\n'
        f'recorder = "tcp://127.0.0.1:{p[2]}"\nmonitor = "tcp://127.0.0.1:{p[3]}"\n'
        f"[metrics]\nfrontend = {p[4]}\nbuilder = {p[5]}\nrecorder = {p[6]}\n"
        f"monitor = {p[7]}\ncontrol = 0\ntrigger = {p[8]}\n"
        f"[simulator]\nspills = {spills}\n[simulator.sim]\ngenerated_s = 0.01\n")
    return topo


@pytest.mark.slow
def test_up_runs_every_service_as_a_process(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    topo = _topology(tmp_path, spills=2)
    assert main(["up", "--config", str(topo), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = set(report["services"])
    assert names >= {"builder", "recorder", "monitor", "trigger-0", "trigger-1", "frontend"}
    for name, r in report["services"].items():
        assert r["exit"] == 0, name
        assert r["peak_rss_bytes"] > 10 * 2**20, name  # sampled from /proc while running
    [path] = sorted((tmp_path / "runs").glob("run*.na64"))
    reader = RunFileReader(path)
    list(reader)
    assert reader.report.closed_cleanly
    assert sorted(reader.report.spills) == [0, 1]
    assert report["gave_up"] == []


def test_a_metrics_port_in_use_is_named() -> None:
    from prometheus_client import CollectorRegistry

    from daq.errors import ConfigError
    from daq.metrics import MetricsServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics.trigger \+ 1={port} .*127.0.0.1:{port}"):
            MetricsServer(CollectorRegistry(), port=port, field="metrics.trigger + 1")


@pytest.mark.slow
def test_up_runs_nothing_when_a_service_cannot_start(tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    topo = _topology(tmp_path, spills=2)
    trigger1 = int(topo.read_text().split("trigger = ")[1].split()[0]) + 1
    with socket.socket() as taken:  # trigger-1's /metrics port is someone else's
        taken.bind(("127.0.0.1", trigger1))
        taken.listen()
        assert main(["up", "--config", str(topo)]) == 2
    err = capfd.readouterr().err
    assert "trigger-1 exited with code 2 while starting" in err, err
    assert f"metrics.trigger + 1={trigger1} is invalid" in err, err  # the worker's own words
    assert not list((tmp_path / "runs").glob("run*.na64*"))  # no beam was sent


@pytest.mark.slow
def test_bench_pipeline_is_loss_free_and_counts_what_it_sent() -> None:
    from daq.bench import bare_zmq, pipeline

    p = pipeline("feature", 20_000, 2)
    assert p["events"] > 35_000
    assert p["processed"] == p["events"] and p["shed"] == 0 and p["lost_events"] == 0
    assert p["events_per_s"] > 0
    assert set(p["peak_rss_bytes"]) >= {"builder", "recorder", "monitor", "trigger-0"}
    z = bare_zmq("feature", 20_000, 2)
    assert z["events"] == p["events"]  # the same frames, the same count
