"""The crash matrix: run the multi-process deployment (`up`, a standing system taking
RUNS consecutive runs under run control), SIGKILL one service in the middle of a spill of
the first run, let the supervisor restart it (it rejoins the run), and account for every
event of both runs; the run after the crash must be clean.

"Reported lost" comes from the system itself: the monitors' per-spill loss counter
(`na64_monitor_lost_events_total`: BEAM-announced events neither processed nor shed), the
builder's shed counter, the workers' kept counters against what `inspect` finds in the run
files. "True missing" comes from the simulator's truth (the same seeds, generated again
here) against what reached the monitors and what is in the run files. The harness scrapes
every process's /metrics like Prometheus would (a restarted process starts its counters at
zero; the last scrape of the killed one is kept, taken right before the kill).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from daq.launch import Proc, scrape, up
from daq.runfile import RunFileReader
from daq.wire import Kind

SPILLS = 6
RUNS = 2
KILL_SPILL = 2
SIM = {"intensity": 4000.0, "spill_length_s": 0.4, "spill_period_s": 0.4,
       "generated_s": 0.4, "slice_events": 256, "seed": 21}


def _frontends(tmp: Path, run: int) -> Any:
    """The front ends' streams of `run` exactly as the standing front end makes them."""
    from daq.app import Factory
    from daq.lifecycle import RunContext
    from daq.stack import load_stack_config

    cfg = load_stack_config(tmp / "topology.toml")
    return Factory(cfg).simulated_run(RunContext(run=run, max_spills=SPILLS))


@dataclass
class Scraper:
    """Last value of every series per process incarnation (pid)."""

    last: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)

    def poll(self, procs: list[Proc]) -> None:
        for p in procs:
            if p.popen.poll() is None:
                with contextlib.suppress(OSError):
                    self.last[(p.name, p.popen.pid)] = scrape(p.metrics, timeout=1.0)

    def final(self, proc: str, series: str) -> float:
        """The value in the last incarnation of a process."""
        last = [v for (n, _), v in self.last.items() if n == proc]
        return last[-1].get(series, 0.0) if last else 0.0

    def total(self, proc: str, series: str) -> float:
        """Sum over incarnations of the last value seen (counters restart at 0)."""
        return sum(v.get(series, 0.0) for (n, _), v in self.last.items()
                   if n == proc or (proc == "trigger" and n.startswith("trigger-")))


def truth_events(tmp: Path, run: int) -> list[int]:
    """Events the simulated beam generated per spill of `run` (truth; its seeds)."""
    fe = _frontends(tmp, run)
    return [fe.sim.plan(s).events for s in range(SPILLS)]


def reference_accepted(tmp: Path, run: int) -> set[tuple[int, int, int]]:
    """(run, spill, event) of every event the trigger accepts when nothing fails."""
    from daq.builder import BuilderConfig, EventBuilder
    from daq.geometry import load_calibration, load_geometry
    from trigger.processor import SliceProcessor

    g = load_geometry()
    cal = load_calibration(g)
    core = EventBuilder(g, BuilderConfig(), calibration=cal.hash)
    proc = SliceProcessor(g, cal)
    out: set[tuple[int, int, int]] = set()
    for em in _frontends(tmp, run).run():
        for b in core.feed(em.msg, 0.0):
            if b.kind is Kind.SLICE:
                acc = proc.process(b).accepted
                out.update((run, acc.spill, int(e)) for e in acc.arrays["event"])
    return out


def write_topology(tmp: Path, ports: list[int]) -> Path:
    ep = iter(ports)
    topo = {
        "run_dir": str(tmp / "runs"), "workers": 2,
        "endpoints": {k: f"tcp://127.0.0.1:{next(ep)}"
                      for k in ("builder_in", "builder_out", "recorder", "monitor",
                                "control")},
        "metrics": {"frontend": next(ep), "builder": next(ep), "recorder": next(ep),
                    "monitor": next(ep), "control": next(ep), "trigger": next(ep)},
        "simulator": {"spills": SPILLS, "pace": "factor", "factor": 1.0, "sim": SIM},
        "builder": {"timeout_s": 0.5},
    }
    path = tmp / "topology.toml"
    path.write_text(tomli_w.dumps(topo))
    return path


@dataclass
class CrashResult:
    service: str
    killed_at_event: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    truth: list[int] = field(default_factory=list)  # events per spill, run after run
    figures: dict[str, Any] = field(default_factory=dict)
    progress: list[dict[str, Any]] = field(default_factory=list)  # what `up` showed


def run_crash(tmp: Path, ports: list[int], victim: str | None) -> CrashResult:
    """One row of the matrix (victim None: the runs without a fault)."""
    topo = write_topology(tmp, ports)
    truth = [n for run in range(1, RUNS + 1) for n in truth_events(tmp, run)]
    kill_at = sum(truth[:KILL_SPILL]) + truth[KILL_SPILL] // 2  # mid-spill, by BEAM events
    res = CrashResult(victim or "none", truth=truth)
    scr = Scraper()
    done = {"killed": False}

    def on_sample(procs: list[Proc]) -> None:
        scr.poll(procs)
        if victim is None or done["killed"]:
            return
        sent = scr.total("frontend", 'na64_frontend_events_total{board="BEAM"}')
        if sent >= kill_at:
            p = next(p for p in procs if p.name == victim)
            scr.poll([p])  # the last look a Prometheus would have had
            p.kill()
            done["killed"] = True
            res.killed_at_event = int(sent)

    res.report = up(topo, autopilot=(RUNS, SPILLS), on_sample=on_sample, max_restarts=2,
                    timeout_s=90, progress=res.progress.append)
    res.figures = account(scr, tmp / "runs", truth,
                          set().union(*(reference_accepted(tmp, r) for r in range(1, RUNS + 1))))
    return res


def account(scr: Scraper, run_dir: Path, truth: list[int],
            ref: set[tuple[int, int, int]]) -> dict[str, Any]:
    n = sum(truth)
    # the monitor continues its run totals after a restart (persisted with each spill it
    # closes): its last incarnation's counters are the run's
    mon = {k: scr.final("monitor", f'na64_{k}{{source="live"}}') for k in
           ("events_total", "shed_events_total", "monitor_lost_events_total",
            "monitor_announced_events_total", "monitor_accepted_events_total")}
    files = sorted(p for p in run_dir.iterdir() if ".na64" in p.name)
    recorded: set[tuple[int, int, int]] = set()
    file_info = []
    dup = 0
    for f in files:
        r = RunFileReader(f)
        for m in r.messages():
            if m.kind is Kind.ACCEPTED:
                ids = {(m.run, m.spill, int(e)) for e in m.arrays["event"]}
                dup += len(ids & recorded)
                recorded |= ids
        rep = r.report
        complete = [s for s, i in rep.spills.items() if i.complete]
        file_info.append({"file": f.name, "run": r.header.get("run"),
                          "closed_cleanly": rep.closed_cleanly, "spills": sorted(rep.spills),
                          "torn": rep.torn, "torn_spill": rep.torn_spill,
                          "complete_spills": complete, "header": r.header.get("config", {})
                          .get("resumed")})
    kept = scr.total("trigger", "na64_trigger_kept_events_total")
    return {
        "generated": n,
        "monitored": int(mon["events_total"]), "shed": int(mon["shed_events_total"]),
        "reported_lost": int(mon["monitor_lost_events_total"]),
        "announced": int(mon["monitor_announced_events_total"]),
        "true_missing": n - int(mon["events_total"]) - int(mon["shed_events_total"]),
        "accepted_reference": len(ref), "accepted_recorded": len(recorded),
        "accepted_kept_reported": int(kept),
        "accepted_monitored": int(mon["monitor_accepted_events_total"]),
        # what the shift crew sees: the monitors' accepted count against `inspect` of the files
        "accepted_lost_reported": int(mon["monitor_accepted_events_total"]) - len(recorded),
        "accepted_missing_true": len(ref - recorded),
        "accepted_not_in_reference": len(recorded - ref), "accepted_duplicates": dup,
        # the run after the crash: every accepted event recorded, nothing else
        "last_run_missing": len({k for k in ref if k[0] == RUNS} - recorded),
        "last_run_extra": len({k for k in recorded if k[0] == RUNS} - ref),
        "builder_incomplete": int(sum(
            v for (n, _), vals in scr.last.items() if n == "builder"
            for k, v in vals.items()
            if k.startswith("na64_builder_incomplete_events_total") and 'source="live"' in k)),
        "monitor_refused": {k: int(v) for k, v in (
            (k, scr.total("monitor", k)) for k in {k for (n, _), vals in scr.last.items()
                                                  if n == "monitor" for k in vals
                                                  if k.startswith("na64_monitor_refused_total")})
            if v},
        "files": file_info,
    }


def wait_ports_free(ports: list[int]) -> None:
    time.sleep(0.1)
