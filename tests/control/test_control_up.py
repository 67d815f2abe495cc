"""The standing system across processes (`na64daq up` with its own broker): run control is
its own process, runs are driven over MQTT with the crew's accounts, a trigger expert's
change becomes active at the next spill boundary, pause and resume hold the beam between
spills, two runs in a row are taken by the same processes, a builder restarted during a
run builds with the active trigger configuration, and nothing is left behind by `up`.

`up` runs in the test's main thread (it handles signals, which Python allows only there);
the crew drives it from a second thread, with its own event loop, through ControlClient
and `na64daq ctl --config`, with the credentials `up`'s broker wrote under the run
directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from daq.control import protocol as P
from daq.control.client import ControlClient
from daq.control.localbroker import local_credentials, mqtt_dir
from daq.launch import Proc, up
from daq.mqtt import MqttSettings
from daq.runfile import RunFileReader
from daq.wire import Kind
from tests.conftest import free_tcp_ports, pid_gone, require_binary

pytestmark = pytest.mark.timeout(240)

SIM = {"intensity": 4000.0, "spill_length_s": 0.4, "spill_period_s": 0.4,
       "generated_s": 0.4, "slice_events": 256, "seed": 5}
SPILL = "na64/monitor/spill"
SERVICES = ("frontend", "builder", "trigger-0", "trigger-1", "recorder", "monitor")
ENDPOINTS = ("builder_in", "builder_out", "recorder", "monitor", "control")
METRICS = ("frontend", "builder", "recorder", "monitor", "control", "trigger")
DEFAULT_ECAL_MAX = 90  # trigger.config's default ecal_max_gev


def _topology(tmp: Path) -> Path:
    ports = iter(free_tcp_ports(12, block=True))  # the last two: trigger-0/1 /metrics
    topo = {
        "run_dir": str(tmp / "runs"), "workers": 2,
        "endpoints": {k: f"tcp://127.0.0.1:{next(ports)}" for k in ENDPOINTS},
        "metrics": {k: next(ports) for k in METRICS},
        "simulator": {"spills": 1000, "pace": "factor", "factor": 1.0, "sim": SIM},
        "builder": {"timeout_s": 0.5},
    }
    path = tmp / "topology.toml"
    path.write_text(tomli_w.dumps(topo))
    return path


def _ports(topo: Path) -> list[int]:
    """Every TCP port of the topology (trigger-1's /metrics is trigger + 1)."""
    import tomllib

    t = tomllib.loads(topo.read_text())
    eps = [int(t["endpoints"][k].rsplit(":", 1)[1]) for k in ENDPOINTS]
    return [*eps, *(t["metrics"][k] for k in METRICS), t["metrics"]["trigger"] + 1]


def _listenable(port: int) -> bool:
    """A server could listen on `port` now, as the services do (SO_REUSEADDR: connections
    that the closed servers left in TIME_WAIT do not count; a socket still bound does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


async def _until(what: str, get: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `get` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = get()
        if v:
            return v
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.1)


class Crew:
    """The shift crew's (here the expert's) view of `up` over MQTT."""

    def __init__(self, ctl: ControlClient) -> None:
        self.ctl = ctl

    @classmethod
    async def connect(cls, run_dir: Path, stack: contextlib.AsyncExitStack) -> Crew:
        creds = await _until("up's broker wrote the expert's credentials",
                             lambda: local_credentials(run_dir, "expert"), 120)
        ctl = await stack.enter_async_context(
            ControlClient(MqttSettings.from_file(creds), timeout=60.0))
        await ctl.follow(f"{P.SERVICES}/+", SPILL, P.ACTIVE, P.RUN_STATE, P.HISTORY)
        return cls(ctl)

    def docs(self) -> dict[str, dict[str, Any]]:
        """Run control's retained document of each service (phase, run, pid, figures)."""
        return {t.rsplit("/", 1)[-1]: d for t, d in self.ctl.seen(f"{P.SERVICES}/+").items()
                if isinstance(d, dict)}

    def one(self, topic: str) -> dict[str, Any]:
        d = self.ctl.seen(topic).get(topic)
        return d if isinstance(d, dict) else {}

    def standing(self) -> dict[str, dict[str, Any]] | None:
        """Every service online under run control and the workers' kernels compiled."""
        d = self.docs()
        ok = all(d.get(n, {}).get("status") == "online" for n in SERVICES) and all(
            d[n].get("ready") for n in SERVICES if n.startswith("trigger-"))
        return d if ok else None

    async def spill_seen(self, run: int, spill: int) -> dict[str, Any]:
        """Until the monitor has published a spill >= `spill` of `run`."""
        return dict(await _until(
            f"the monitor published spill {spill} of run {run}",
            lambda: (s := self.one(SPILL)).get("run") == run and s.get("spill", -1) >= spill
            and s))

    async def closed(self, run: int) -> dict[str, Any]:
        """Until run control says `run` is stopped; its run record."""
        st = await _until(f"run {run} stopped", lambda: (s := self.one(P.RUN_STATE)).get(
            "state") == "stopped" and (s.get("run") or {}).get("run") == run and s)
        return dict(st["run"])


def _drive(fn: Callable[[], Coroutine[Any, Any, Any]], done: threading.Event,
           out: dict[str, Any]) -> threading.Thread:
    """Run the crew's coroutine in a thread of its own; `done` is set when it ends."""

    def main() -> None:
        try:
            out["result"] = asyncio.run(fn())
        except BaseException as e:  # re-raised in the test, after `up` has returned
            out["error"] = e
        finally:
            done.set()

    t = threading.Thread(target=main, name="crew", daemon=True)
    t.start()
    return t


def _up(topo: Path, crew: Callable[[], Coroutine[Any, Any, Any]], **kw: Any
        ) -> tuple[dict[str, Any], Any]:
    """`up` in this (main) thread until the crew is done; the report and the crew's result."""
    done, out = threading.Event(), {}
    t = _drive(crew, done, out)
    try:
        report = up(topo, stop=done.is_set, timeout_s=200, **kw)
    finally:
        done.set()
        t.join(60)
    if "error" in out:
        raise out["error"]
    assert not t.is_alive()
    return report, out["result"]


def _ctl_status(topo: Path) -> str:
    """`na64daq ctl --config TOPO status`, as the shift crew reads it."""
    r = subprocess.run([sys.executable, "-m", "daq.cli", "ctl", "--config", str(topo),
                        "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _trigger_cfgs(msgs: list[Any]) -> dict[int, set[float]]:
    """The trigger configuration's ecal_max_gev each spill's accepted events ran with."""
    out: dict[int, set[float]] = {}
    for m in msgs:
        if m.kind is Kind.ACCEPTED:
            out.setdefault(m.spill, set()).add(m.meta["trigger_config"]["ecal_max_gev"])
    return out


def _complete_file(path: Path) -> list[Any]:
    reader = RunFileReader(path)
    msgs = list(reader)
    assert reader.report.closed_cleanly and not reader.report.torn, path
    spills = sorted(reader.report.spills)
    assert spills == list(range(len(spills))) and spills, (path, spills)  # none missing
    assert all(sp.complete for sp in reader.report.spills.values()), path
    return msgs


def test_each_service_may_log_in_with_its_own_account(monkeypatch: pytest.MonkeyPatch) -> None:
    from daq.app import mqtt_settings
    from daq.stack import StackConfig

    cfg = StackConfig.parse({"mqtt": "mqtt://127.0.0.1:1883"})
    monkeypatch.setenv("NA64_MQTT_USERNAME", "shared")
    monkeypatch.setenv("NA64_MQTT_PASSWORD", "pw")
    monkeypatch.setenv("NA64_MQTT_BUILDER_USERNAME", "builder")
    assert mqtt_settings(cfg, "builder").username == "shared"  # half an account: not used
    monkeypatch.setenv("NA64_MQTT_BUILDER_PASSWORD", "bpw")
    own = mqtt_settings(cfg, "builder")
    assert (own.username, own.password.get_secret_value()) == ("builder", "bpw")
    assert mqtt_settings(cfg, "monitor").username == "shared"
    assert mqtt_settings(cfg).username == "shared"
    assert mqtt_settings(StackConfig.parse({}), "builder") is None


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.mosquitto  # up's own
def test_runs_pause_and_a_trigger_change_across_processes(tmp_path: Path) -> None:
    require_binary("mosquitto")
    topo = _topology(tmp_path)
    run_dir = tmp_path / "runs"

    async def crew() -> dict[str, Any]:
        got: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            c = await Crew.connect(run_dir, stack)
            got["broker"] = json.loads((mqtt_dir(run_dir) / "broker.json").read_text())
            docs = await _until("every service standing under run control", c.standing, 120)
            got["pids"] = {n: docs[n]["pid"] for n in SERVICES}
            assert all(docs[n]["phase"] in ("booted", "configured") for n in SERVICES), docs
            # run 1, started by the expert, until stopped
            r = await c.ctl.run("start", params={"comment": "standing up"})
            assert r["ok"] and r["state"] == "running", r
            run = got["run"] = r["run"]
            seen = await c.spill_seen(run, 1)  # the crew has seen a spill of it
            r = await c.ctl.trigger_set(["ecal_max_gev=55"], comment="under up")
            assert r["ok"] and r["pending"], r
            active = await _until("the new trigger configuration active", lambda: (
                a := c.one(P.ACTIVE)).get("config", {}).get("ecal_max_gev") == 55 and a)
            assert active["who"] == "expert" and active["run"] == run, active
            got["from_spill"] = active["spill"]
            assert seen["spill"] < active["spill"], (seen, active)  # the next boundary
            # the audit trail names who changed what, and from which spill it applied
            history = await _until("the activation in the audit trail", lambda: (
                h := c.ctl.seen(P.HISTORY).get(P.HISTORY) or []) and any(
                e["event"] == "activated" for e in h) and h)
            done = [e for e in history if e["event"] in ("requested", "activated")]
            assert [(e["event"], e["who"]) for e in done] == [("requested", "expert"),
                                                              ("activated", "expert")], history
            assert done[1]["spill"] == active["spill"]
            # pause: the spill under way ends, the next one waits
            r = await c.ctl.run("pause")
            assert r["ok"] and r["state"] == "paused", r
            fe = await _until("the front ends hold", lambda: (
                d := c.docs().get("frontend", {})).get("paused") and d.get("phase") == "paused"
                and d)
            held = fe["spill"]
            t_end = time.monotonic() + 2.0  # five spill periods, two heartbeats
            while time.monotonic() < t_end:
                assert c.docs()["frontend"]["spill"] == held, c.docs()["frontend"]
                assert c.one(SPILL).get("spill", -1) <= held, c.one(SPILL)
                await asyncio.sleep(0.1)
            r = await c.ctl.run("resume")
            assert r["ok"] and r["state"] == "running", r
            got["held"] = held
            await c.spill_seen(run, max(held, active["spill"]) + 2)
            r = await c.ctl.run("stop")
            assert r["ok"] and r["state"] == "stopped" and r["spills"] >= held + 3, r
            got["run1"] = r
            # every service was told: the run is closed everywhere (the documents follow)
            await _until("every service out of run 1", lambda: all(
                c.docs()[n]["phase"] == "configured" for n in SERVICES), 10)
            # run 2: ended by the front ends after its spills, stopped by run control
            r = await c.ctl.run("start", params={"max_spills": 2})
            assert r["ok"] and r["run"] == run + 1, r
            await _until("the services in run 2", lambda: all(
                c.docs().get(n, {}).get("run") == run + 1 for n in SERVICES))
            got["pids2"] = {n: d["pid"] for n, d in c.docs().items() if n in SERVICES}
            got["run2"] = await c.closed(run + 1)
            got["status"] = await asyncio.to_thread(_ctl_status, topo)
            got["pids3"] = {n: d["pid"] for n, d in c.docs().items() if n in SERVICES}
        return got

    report, got = _up(topo, crew)
    run = got["run"]
    # the same processes took both runs, and `up` stopped every one of them cleanly
    assert got["pids"] == got["pids2"] == got["pids3"], got
    assert report["ok"] and report["gave_up"] == [], report
    assert set(report["services"]) == {"control", *SERVICES}
    for name, s in report["services"].items():
        assert s["exit"] == 0 and s["restarts"] == 0, (name, s)
        if name != "control":
            assert s["pid"] == got["pids"][name], (name, s["pid"], got["pids"][name])
    assert got["run2"]["spills"] == 2 and "max_spills" in got["run2"]["stop_reason"], got
    # what the shift crew reads from `na64daq ctl status`: every service, its process
    lines = {ln.split()[0]: ln.split() for ln in got["status"].splitlines()
             if ln.split()[:1] and ln.split()[0] in SERVICES}
    for n in SERVICES:
        assert lines[n][1:3] == ["online", "configured"], got["status"]
        assert lines[n][lines[n].index("pid") + 1] == str(got["pids"][n]), got["status"]
    # nothing is left: no process of the stack, not its broker; every port is free again
    pids = [s["pid"] for s in report["services"].values()] + [got["broker"]["pid"]]
    assert all(pid_gone(p) for p in pids), pids
    busy = [p for p in (*_ports(topo), got["broker"]["port"]) if not _listenable(p)]
    assert busy == [], busy
    # the run files: complete, numbered by run control, the trigger change where it applied
    files = sorted(p.name for p in run_dir.glob("*.na64"))
    assert files == [f"run{run:06d}.na64", f"run{run + 1:06d}.na64"], files
    msgs = _complete_file(run_dir / files[0])
    assert msgs[0].kind is Kind.RUN_START and msgs[0].meta["config"]["run"] == run
    spills = sorted({m.spill for m in msgs if m.kind is Kind.SPILL_END})
    assert len(spills) == got["run1"]["spills"]  # nothing lost or cut across the pause
    from_spill = got["from_spill"]
    cfgs = _trigger_cfgs(msgs)
    assert any(s >= from_spill for s in cfgs), cfgs
    assert all(v == {55 if s >= from_spill else DEFAULT_ECAL_MAX} for s, v in cfgs.items()), cfgs
    [config] = [m for m in msgs if m.kind is Kind.CONFIG and m.spill == from_spill]
    assert config.meta["who"] == "expert" and config.meta["trigger_config"]["ecal_max_gev"] == 55
    # run 2 starts with what was active at the end of run 1
    msgs2 = _complete_file(run_dir / files[1])
    assert sorted({m.spill for m in msgs2 if m.kind is Kind.SPILL_END}) == [0, 1]
    cfgs2 = _trigger_cfgs(msgs2)
    assert cfgs2 and all(v == {55} for v in cfgs2.values()), cfgs2


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.mosquitto  # up's own
def test_a_builder_restarted_during_a_run_builds_with_the_active_trigger_config(
        tmp_path: Path) -> None:
    """The builder killed mid-run after a trigger change: `up` restarts it, it says hello,
    and run control gives it the active configuration (at once) before it rejoins the run.
    Without that it would build the rest of the run with the default."""
    require_binary("mosquitto")
    topo = _topology(tmp_path)
    run_dir = tmp_path / "runs"
    kill = threading.Event()
    killed: list[int] = []

    def on_sample(procs: list[Proc]) -> None:
        if kill.is_set() and not killed:
            [b] = [p for p in procs if p.name == "builder"]
            killed.append(b.popen.pid)
            b.kill()  # SIGKILL, as a crash; up's supervisor starts it again

    async def crew() -> dict[str, Any]:
        got: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            c = await Crew.connect(run_dir, stack)
            docs = await _until("every service standing under run control", c.standing, 120)
            old = docs["builder"]["pid"]
            r = await c.ctl.run("start")
            assert r["ok"], r
            run = got["run"] = r["run"]
            await c.spill_seen(run, 1)
            r = await c.ctl.trigger_set(["ecal_max_gev=55"], comment="before the crash")
            assert r["ok"], r
            active = await _until("the new trigger configuration active", lambda: (
                a := c.one(P.ACTIVE)).get("config", {}).get("ecal_max_gev") == 55 and a)
            got["from_spill"] = active["spill"]
            await c.spill_seen(run, active["spill"])
            kill.set()
            # the new builder: another process, back in the run, with the active config,
            # and building spills of it
            new = await _until("a new builder building run " + str(run), lambda: (
                d := c.docs().get("builder", {})).get("pid") not in (None, old)
                and d.get("status") == "online" and d.get("phase") == "running"
                and d.get("run") == run and d.get("spills", 0) >= 3 and d)
            got["builder"] = new
            got["active"] = active
            r = await c.ctl.run("stop")
            assert r["ok"], r
        return got

    report, got = _up(topo, crew, on_sample=on_sample)
    assert killed, "the builder was never killed"
    assert report["services"]["builder"]["restarts"] == 1
    assert report["services"]["builder"]["earlier_exits"] == [-9]
    assert report["ok"], report  # restarted, and every process exited cleanly at the end
    new = got["builder"]
    assert new["pid"] == report["services"]["builder"]["pid"] != killed[0]
    assert new["cfg"] == got["active"]["cfg"]  # what it builds with: the active config
    [path] = sorted(run_dir.glob("*.na64"))
    reader = RunFileReader(path)
    msgs = list(reader)
    assert reader.report.closed_cleanly
    cfgs = _trigger_cfgs(msgs)
    after = [s for s in cfgs if s >= got["from_spill"]]
    assert after, cfgs
    # every spill from the change on, built by either builder, ran with the new config;
    # the new builder built the last spills
    assert all(v == {55 if s >= got["from_spill"] else DEFAULT_ECAL_MAX}
               for s, v in cfgs.items()), cfgs
    assert max(after) >= max(cfgs) and len(after) >= 3, cfgs


class _FirstBuilder:
    """The builder's first incarnation on the command channel (it is killed at once)."""

    def __init__(self) -> None:
        from daq.lifecycle import Lifecycle

        self.lifecycle = Lifecycle()

    async def on_transition(self, *_: Any) -> dict[str, Any]:
        return {}

    async def on_set(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    def status(self) -> dict[str, Any]:
        return {}


def _mid_run(run: int) -> list[Any]:
    """Every board's records of spills 1 and 2 of `run` (a run well under way)."""
    from daq.geometry import load_calibration, load_geometry
    from simulators.config import SimConfig
    from simulators.frontend import TRUTH, FrontEnds
    from simulators.generator import Simulator

    g = load_geometry()
    sim = Simulator(SimConfig.parse({"generated_s": 0.002, "seed": 3, "run": run,
                                     "slice_events": 256}), g, load_calibration(g))
    return [em for em in FrontEnds(sim, spills=3).run(end="run_stop")
            if em.src != TRUTH and em.msg.spill >= 1
            and em.msg.kind in (Kind.SPILL_START, Kind.SLICE, Kind.SPILL_END)]


@pytest.mark.asyncio
async def test_a_restarted_builder_takes_the_active_trigger_config_before_any_record(
        tmp_path: Path) -> None:
    """The same, in one process and without the race: the records of the run under way
    already wait at the restarted builder's input when it starts. It builds none of them
    before run control (a real Conductor) has given it the active trigger configuration
    and the run to rejoin; every spill it builds runs with that configuration."""
    import zmq
    from prometheus_client import CollectorRegistry

    from daq.agent import Agent
    from daq.app import Factory
    from daq.config import content_hash
    from daq.control.conductor import Conductor
    from daq.stack import StackConfig
    from daq.transport import context
    from daq.wire import decode
    from trigger.config import TriggerConfig

    cfg = StackConfig.parse({"run_dir": str(tmp_path), "workers": 1}).inproc("restarted")
    ctx = context()
    cond = Conductor(cfg.endpoints.control, ["builder"], ctx=ctx)
    stop = asyncio.Event()
    channel = asyncio.create_task(cond.serve(stop))
    first = asyncio.create_task(Agent(cond.endpoint, "builder", _FirstBuilder(), ctx=ctx,
                                      heartbeat_s=0.05).run(asyncio.Event()))
    new = TriggerConfig.parse({"ecal_max_gev": 55}).model_dump(mode="json")
    try:
        await asyncio.wait_for(cond.wait_ready(), 10)
        await cond.set_trigger_config(new, "expert")
        await cond.start_run(5, {"params": {}})
        first.cancel()  # the builder crashes during run 5
        await asyncio.gather(first, return_exceptions=True)
        builder = Factory(cfg, ctx=ctx, control=cond.endpoint).builder(CollectorRegistry())
        out = ctx.socket(zmq.PULL)
        out.connect(builder.output_endpoint)
        boards = ctx.socket(zmq.PUSH)
        boards.connect(builder.input_endpoint)
        try:
            for em in _mid_run(5):  # the front ends' records wait for the new builder
                await boards.send_multipart(em.frames())
            built: list[Any] = []
            async with builder:
                async with asyncio.timeout(20):
                    while not any(m.kind is Kind.SPILL_END and m.spill == 2 for m in built):
                        built.append(decode(await out.recv_multipart(), verify_crc=False))
            lc = builder.lifecycle
            joined = (lc.run, lc.context is not None and lc.context.joined)
        finally:
            boards.close(linger=0)
            out.close(linger=0)
    finally:
        stop.set()
        await asyncio.gather(channel, return_exceptions=True)
    starts = [m for m in built if m.kind in (Kind.SPILL_START, Kind.CONFIG)]
    assert {m.spill for m in starts} == {1, 2}, [(m.kind, m.spill) for m in built]
    assert {m.meta["cfg"] for m in starts} == {content_hash(new)}, [m.meta for m in starts]
    assert [m.meta["who"] for m in built if m.kind is Kind.CONFIG] == ["expert"]
    st = builder.builder.stats["live"]
    assert st.events == sum(m.count for m in built if m.kind is Kind.SLICE) > 0
    assert not +st.refused
    assert joined == (5, True)  # and it is in the run under way
