"""`na64daq demo`, `up` and the benchmark's pipeline: the whole system runs and loses nothing."""

from __future__ import annotations

import io
import json
import re
import socket
from pathlib import Path

import pytest

from daq.cli import main
from daq.runfile import RunFileReader
from tests.conftest import free_tcp_ports, pid_gone, require_binary


@pytest.mark.slow
def test_demo_runs_spills_and_records_them(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "--spills", "2", "--generated-s", "0.02", "--no-live", "--json",
               "--run-dir", str(tmp_path), "--seed", "5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    run = out["run"]
    assert isinstance(run, int) and [s["spill"] for s in out["spills"]] == [0, 1]
    assert all(s["run"] == run for s in out["spills"])
    rate = 6e6 / 4.8
    for s in out["spills"]:
        assert s["events"] > 0.9 * rate * 0.02  # Poisson(25000): far inside
        assert s["incomplete_events"] == 0 and s["live_time_ratio"] == 1.0
        veto = s["veto_efficiency"]
        # the zero-threshold efficiency is the pileup expectation at 6e6 e-/spill: the
        # halo rate and reconstruction windows reproduce the paper's 0.94 (docs/monitors.md)
        expect = 0.939
        half = veto["high"] - veto["low"]
        assert abs(veto["value"] - expect) < 4 * half
    assert out["alarms_raised"] == []  # nominal beam
    [path] = out["files"]
    assert Path(path).name == f"run{run:06d}.na64"
    reader = RunFileReader(path)
    kinds = [m.kind.value for m in reader]
    assert reader.report.closed_cleanly and not reader.report.torn
    assert kinds[0] == "run_start" and kinds[-1] == "run_stop"
    assert sorted(reader.report.spills) == [0, 1]
    assert all(sp.complete for sp in reader.report.spills.values())
    recorded = sum(m.count for m in RunFileReader(path) if m.kind.value == "accepted")
    assert recorded == sum(s["accepted"] for s in out["spills"])
    _check_live_view(out["spills"])
    # run control numbers the runs (its state persists under the run directory): the next
    # demo on the same directory takes the next number and its own file
    rc = main(["demo", "--spills", "1", "--generated-s", "0.005", "--no-live", "--json",
               "--run-dir", str(tmp_path), "--seed", "5"])
    assert rc == 0
    again = json.loads(capsys.readouterr().out)
    assert again["run"] == run + 1, (run, again["run"])
    assert [s["spill"] for s in again["spills"]] == [0]
    [second] = again["files"]
    assert Path(second).name == f"run{run + 1:06d}.na64"
    assert sorted(p.name for p in tmp_path.glob("run*.na64")) == [
        f"run{run:06d}.na64", f"run{run + 1:06d}.na64"]
    reader = RunFileReader(second)
    assert [m.run for m in reader if m.kind.value == "run_start"] == [run + 1]
    assert reader.report.closed_cleanly


@pytest.mark.slow
def test_demo_live_view_shows_the_alarms_raised(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """5x the nominal intensity: pileup pulls the VETO and HCAL efficiencies far below their
    alarm bounds (exp(-6.25 MHz x 50 ns) = 0.73); the view's alarm panel must say so."""
    rc = main(["demo", "--spills", "1", "--intensity", "3e7", "--generated-s", "0.005",
               "--run-dir", str(tmp_path), "--seed", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    raised = ("hcal_efficiency_low", "pileup_high", "veto_efficiency_low")
    # the last frame: the run has ended, which clears live alarms, not the record of them
    panel = " ".join(out[out.rindex("─ alarms ─"):].split("╰")[0].replace("│", " ").split())
    assert "raised earlier, cleared since: " + ", ".join(raised) in panel, out
    [row] = [ln for ln in out.splitlines() if "alarms raised" in ln]  # the run summary
    assert all(a in row for a in raised), row
    assert "generated 0 events" not in out, out


def _render(renderable: object, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def _check_live_view(spills: list[dict]) -> None:
    """The shift crew's live view of these spills, and of the same at full intensity (a
    whole 4.8 s spill: 6e6 events), on 120-, 100- and 80-column terminals: every figure
    shown is whole; a narrow terminal leaves the least important columns out."""
    from daq.live import view

    full = [{**s, "events": 6_123_456 + s["spill"], "eot": 5_987_654.0} for s in spills]
    for sums, events, eot in ((spills, None, None), (full, "6.12M", "5.99M")):
        for width in (120, 100, 80):
            text = _render(view(run=7, sent_events=12_345_678, summaries=sums, alarms=[],
                                metrics_url="http://127.0.0.1:9100/metrics",
                                elapsed_s=12.3, run_file="/runs/run000007.na64"), width)
            assert "…" not in text, text
            [header] = [ln.split("  ") for ln in text.splitlines()
                        if ln.strip().startswith("spill ")]
            header = [h.strip() for h in header if h.strip()]
            rows = [dict(zip(header, ln.split(), strict=True)) for ln in text.splitlines()
                    if ln.split()[:1] in (["0"], ["1"])]
            assert [r["spill"] for r in rows] == ["0", "1"], text
            assert all(r["VETO eff"].startswith("0.9") and "±" in r["HCAL eff"]
                       for r in rows), text
            if events is not None:
                assert all(r["events"] == events and r["EOT"] == eot for r in rows), text
            if width == 120:  # every column but the muon fraction and the signal box
                assert header == ["spill", "events", "EOT", "live", "pileup", "VETO eff",
                                  "HCAL eff", "hadron", "phys Hz", "beam Hz", "lost/shed",
                                  "incompl", "cfg"], header
                assert all(len(r["cfg"]) == 6 for r in rows), text  # the trigger config's hash
            assert "generated 12,345,678 events" in text, text


def _topology(tmp_path: Path, spills: int, pace: str = "") -> Path:
    # p[8], p[9]: the two trigger workers' /metrics; p[10]: run control's command channel
    p = free_tcp_ports(11, block=True)
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'run_dir = "{tmp_path / "runs"}"\nworkers = 2\n[endpoints]\n'
        f'builder_in = "tcp://127.0.0.1:{p[0]}"\nbuilder_out = "tcp://127.0.0.1:{p[1]}"\n'
        f'recorder = "tcp://127.0.0.1:{p[2]}"\nmonitor = "tcp://127.0.0.1:{p[3]}"\n'
        f'control = "tcp://127.0.0.1:{p[10]}"\n'
        f"[metrics]\nfrontend = {p[4]}\nbuilder = {p[5]}\nrecorder = {p[6]}\n"
        f"monitor = {p[7]}\ncontrol = 0\ntrigger = {p[8]}\n"
        f"[simulator]\nspills = {spills}\n{pace}[simulator.sim]\ngenerated_s = 0.01\n")
    return topo


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.mosquitto
def test_up_runs_every_service_as_a_process(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("mosquitto")
    topo = _topology(tmp_path, spills=2)
    assert main(["up", "--config", str(topo), "--autopilot", "1:2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["gave_up"] == [], report
    assert set(report["services"]) == {"control", "frontend", "builder", "trigger-0",
                                       "trigger-1", "recorder", "monitor"}
    for name, r in report["services"].items():
        assert r["exit"] == 0 and r["restarts"] == 0, (name, r)  # clean, drained exits
        assert r["peak_rss_bytes"] > 10 * 2**20, name  # sampled from /proc while running
        assert pid_gone(r["pid"]), name
        assert Path(r["log"]).parent == tmp_path / "runs" / "logs"
    # the run, as run control recorded it: numbered by run control, ended by its spills
    [run] = report["runs"]
    assert run["spills"] == 2 and "max_spills" in run["stop_reason"], run
    assert run["started_by"] == "shift"  # the autopilot drives run control as the crew would
    [path] = sorted((tmp_path / "runs").glob("run*.na64"))
    assert path.name == f"run{run['run']:06d}.na64"
    reader = RunFileReader(path)
    list(reader)
    assert reader.report.closed_cleanly
    assert sorted(reader.report.spills) == [0, 1]
    assert all(sp.complete for sp in reader.report.spills.values())
    fig = report["figures"]  # the monitor's own account of the run, before it was stopped
    assert fig["spills"] == 2 and fig["forced_spills"] == 0 and fig["last_spill"] == 1
    assert fig["events"] == run["events"]
    assert fig["lost"] == 0 and fig["shed"] == 0
    assert fig["alarms"] == fig["alarms_raised"] == []  # nominal beam
    assert 0 < fig["eot"] <= fig["events"]
    assert 0.85 < fig["veto_efficiency"] < 1 and 0.85 < fig["hcal_efficiency"] < 1


def test_run_figures_read_the_live_source_only() -> None:
    from daq.launch import run_figures

    live, replay = 'source="live"', 'source="replay"'
    samples = {
        f'na64_spills_total{{closed="complete",{live}}}': 3.0,
        f'na64_spills_total{{closed="forced",{live}}}': 1.0,
        f'na64_spills_total{{closed="complete",{replay}}}': 50.0,
        f'na64_spills_created{{closed="complete",{live}}}': 1.7e9,
        f"na64_events_total{{{live}}}": 1000.0, f"na64_events_total{{{replay}}}": 9.0,
        f"na64_eot_total{{{live}}}": 950.5, f"na64_shed_events_total{{{live}}}": 7.0,
        f"na64_monitor_lost_events_total{{{live}}}": 2.0,
        f"na64_spill_number{{{live}}}": 3.0, f"na64_spill_number{{{replay}}}": 49.0,
        f'na64_efficiency_ratio{{bound="value",detector="veto",{live}}}': 0.94,
        f'na64_efficiency_ratio{{bound="low",detector="veto",{live}}}': 0.93,
        f'na64_efficiency_ratio{{bound="value",detector="hcal",{replay}}}': 0.5,
        f'na64_alarm_active{{alarm="veto_efficiency_low",{live}}}': 1.0,
        f'na64_alarm_active{{alarm="pileup_high",{live}}}': 0.0,
        f'na64_alarm_active{{alarm="no_spill",{replay}}}': 1.0,
        f'na64_alarms_raised_total{{alarm="veto_efficiency_low",{live}}}': 2.0,
        f'na64_alarms_raised_total{{alarm="pileup_high",{live}}}': 1.0,
        f'na64_alarms_raised_total{{alarm="no_spill",{live}}}': 0.0,
    }
    assert run_figures(samples) == {
        "spills": 4, "forced_spills": 1, "last_spill": 3.0, "events": 1000, "eot": 950.5,
        "shed": 7, "lost": 2, "veto_efficiency": 0.94, "hcal_efficiency": None,
        "pileup": None, "alarms": ["veto_efficiency_low"],
        "alarms_raised": ["pileup_high", "veto_efficiency_low"]}
    assert run_figures(samples, "replay")["spills"] == 50


@pytest.mark.parametrize(("count", "shown"), [
    (0, "0"), (987, "987"), (999.4, "999"), (999.6, "1.00k"), (25_150, "25.1k"),
    (99_960, "100k"), (999_600, "1.00M"), (6_000_123, "6.00M"), (6_012_000, "6.01M"),
    (123_456_789, "123M"), (1.2e9, "1.20G"), (None, "-")])
def test_counts_are_compact_and_keep_their_precision(count: float | None, shown: str) -> None:
    from daq.live import _si

    assert _si(count) == shown


def test_bench_results_are_shown_against_their_targets() -> None:
    from daq.live import bench_table

    mib = 2**20
    res = {"kernel": {"waveform_kernel_events_per_s_1core": 1.0e6, "cores": 2,
                      "waveform_kernel_events_per_s_all_cores": 1.8e6,
                      "speedup_vs_reference_1core": 9.4, "numpy_reference_events_per_s": 1.06e5,
                      "bandwidth_bound_events_per_s": 4.2e6, "memory_read_bandwidth_gb_s": 29.4},
           "pipeline_feature_events_per_s": 3.71e6, "zmq_feature_events_per_s": 8.2e6,
           "pipeline_feature_vs_zmq_ratio": 0.452,
           "pipeline_waveform_events_per_s": 0.616e6, "zmq_waveform_events_per_s": 0.953e6,
           "pipeline_waveform_vs_zmq_ratio": 0.646, "lost_events": 0,
           "peak_rss_bytes": {"feature:builder": 432 * mib, "waveform:builder": 447 * mib}}
    rows = {re.split(r"\s{2,}", ln.strip())[0]: ln
            for ln in _render(bench_table(res), 120).splitlines() if ln.strip()}
    assert "3.71 M/s" in rows["end to end, feature mode"]
    assert "met: >= 3.00 M/s; 2.47x the beam's peak" in rows["end to end, feature mode"]
    assert "MISSED: >= 0.5" in rows["/ bare ZeroMQ (8.20 M/s)"]  # 0.452
    assert "met: >= 0.6" in rows["/ bare ZeroMQ (0.95 M/s)"]
    assert "9.4x the NumPy reference" in rows["trigger kernel, full waveforms, 1 core"]
    assert "447 MiB" in rows["peak memory, waveform:builder"]


def test_up_status_line_names_alarms_losses_and_restarts() -> None:
    from daq.live import run_status

    fig = {"spills": 3, "events": 1_234_567, "eot": 1_200_000.4, "lost": 12,
           "alarms": ["veto_efficiency_low"], "restarts": {"trigger-1": 1, "monitor": 2}}
    line = run_status(fig).plain
    assert line == ("spills closed 3   events 1,234,567   EOT 1,200,000   lost 12   alarms "
                    "veto_efficiency_low   restarted monitor x2, trigger-1 x1"), line
    assert "restarted" not in run_status({**fig, "restarts": {}}).plain


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.mosquitto
def test_up_shows_the_run_as_it_goes(tmp_path: Path) -> None:
    from daq.launch import up

    require_binary("mosquitto")
    seen: list[dict] = []
    # SPS timing 20x faster: a spill every 0.84 s, so the run lasts several looks (0.5 s)
    topo = _topology(tmp_path, spills=3, pace='pace = "factor"\nfactor = 20.0\n')
    report = up(topo, autopilot=(1, 3), progress=seen.append)
    assert report["ok"], report
    # the looks taken once the monitor answered (before, it is still starting)
    spills = [f["spills"] for f in seen if f.get("spills") is not None]
    assert spills == sorted(spills) and spills[0] < spills[-1], spills  # it moved, never back
    assert all(f["restarts"] == {} for f in seen)  # nothing crashed
    states = [f["run_state"].get("state") for f in seen]
    assert "running" in states, states  # the crew saw the run under way
    assert report["figures"]["spills"] == 3 and report["figures"]["lost"] == 0
    assert [r["spills"] for r in report["runs"]] == [3]


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


def test_demo_under_run_control_keeps_its_metrics_ports_from_run_to_run() -> None:
    """Under --mqtt the demo stands and takes run after run: a Prometheus (and the shift
    crew's bookmark) follows it from run to run. The ports are chosen once, in the
    --metrics-port layout, and were free."""
    from daq.app_commands import _demo_config
    from daq.cli import build_parser

    args = build_parser().parse_args(["demo", "--mqtt", "mqtt://127.0.0.1:1", "--workers", "3"])
    m = _demo_config(args).metrics
    ports = [m.port(s) for s in ("monitor", "builder", "recorder", "frontend", "control")]
    ports += [m.port("trigger", i) for i in range(3)]
    assert ports == [m.monitor + k for k in (0, 1, 2, 3, 4, 10, 11, 12)] and m.monitor > 0
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free a moment ago: bindable now
    plain = _demo_config(build_parser().parse_args(["demo"])).metrics
    assert plain.monitor == 0  # without run control: one pipeline, free ports as it starts


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.mosquitto
def test_up_runs_nothing_when_a_service_cannot_start(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("mosquitto")
    topo = _topology(tmp_path, spills=2)
    trigger1 = int(topo.read_text().split("trigger = ")[1].split()[0]) + 1
    with socket.socket() as taken:  # trigger-1's /metrics port is someone else's
        taken.bind(("127.0.0.1", trigger1))
        taken.listen()
        assert main(["up", "--config", str(topo), "--autopilot", "1:2", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    # the report names the service, its exit code and its own last words (its log's last
    # line), and where the rest of its log is
    [failed] = report["runs"]
    assert set(failed) == {"error"}, failed  # no run was started
    log = tmp_path / "runs" / "logs" / "trigger-1.log"
    assert "trigger-1 exited with code 2 while starting" in failed["error"], failed
    assert f"metrics.trigger + 1={trigger1} is invalid" in failed["error"], failed
    assert f"(log: {log})" in failed["error"], failed
    assert f"metrics.trigger + 1={trigger1} is invalid" in log.read_text()
    assert report["services"]["trigger-1"]["exit"] == 2
    # everything else was stopped: no process of this `up` is left
    assert all(pid_gone(r["pid"]) for r in report["services"].values()), report["services"]
    assert not list((tmp_path / "runs").glob("run*.na64*"))  # no beam was sent


@pytest.mark.slow
@pytest.mark.multiprocess
def test_bench_pipeline_is_loss_free_and_counts_what_it_sent() -> None:
    from daq.bench import bare_zmq, pipeline

    p = pipeline("feature", 20_000, 2)
    assert p["events"] > 35_000
    assert p["processed"] == p["events"] and p["shed"] == 0 and p["lost_events"] == 0
    assert p["events_per_s"] > 0
    assert set(p["peak_rss_bytes"]) >= {"builder", "recorder", "monitor", "trigger-0"}
    z = bare_zmq("feature", 20_000, 2)
    assert z["events"] == p["events"]  # the same frames, the same count
