"""Soak: runs in a row in compressed time on the standing system; memory, open files and
counts must not drift, within a run or from one run to the next.

    python scripts/soak.py --spills 1000 --runs 5 --generated-s 0.002 --out soak.json

Every service runs in this process under run control (daq.app.LocalStack on inproc
transports, two trigger workers), as fast as the simulator can generate: --runs runs of
--spills/--runs spills each, every one started and stopped by run control, the services
standing from the first run to the last (as under `na64daq up`). Every `--every` spills it
samples the process's resident memory (VmRSS) and its open file descriptors, and again
between runs; every spill the monitor closes is checked: events processed + events shed ==
the BEAM board's count. Each run's chain of totals is checked (front ends -> builder ->
workers -> monitor, recorder's file read back at the end), and that run control numbered
the runs one after the other; between runs the open files must not grow. Memory is judged
on what the process holds: each sample reads VmRSS, asks glibc to give back the free memory
it keeps (malloc_trim), and reads it again. A standing process's raw VmRSS climbs over its
first runs (each run brings its own peaks, and glibc keeps what was freed) and is reported;
what it holds after the trim must not grow beyond the allowance from spill --baseline on.
It prints a JSON report; exit status 1 if anything drifted or grew beyond the allowance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daq.app import LocalStack
from daq.runfile import read_all
from daq.service import MALLOC_TRIM
from daq.stack import StackConfig
from daq.wire import Kind


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))




def held_bytes() -> int:
    """VmRSS once the allocator has returned the free memory it kept."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    return rss_bytes()


class Soak:
    """The counts of one soak: what the beam sent, the samples and the drifted spills."""

    def __init__(self, a: argparse.Namespace, per_run: int) -> None:
        self.a = a
        self.per_run = per_run
        self.t0 = time.monotonic()
        self.sent = 0  # BEAM events of the run under way
        self.runs_done = 0
        self.samples: list[dict[str, Any]] = []
        self.between: list[dict[str, Any]] = []
        self.drift: list[dict[str, Any]] = []

    def sample(self, spill: int) -> dict[str, Any]:
        rss = rss_bytes()
        return {"spill": spill, "rss_bytes": rss, "held_bytes": held_bytes(),
                "fds": open_fds(), "t_s": round(time.monotonic() - self.t0, 2)}

    def on_emit(self, em: Any) -> None:
        m = em.msg
        if em.src != "BEAM":
            return
        if m.kind is Kind.SLICE:
            self.sent += m.count
        spill = self.runs_done * self.per_run + m.spill  # counted over the whole soak
        if m.kind is Kind.SPILL_START and spill % self.a.every == 0:
            self.samples.append(self.sample(spill))

    def watch(self, mon: Any) -> None:
        """Check every spill the monitor closes, as it closes it."""
        closed = mon._closed

        def check(ra: Any, sums: list[Any]) -> None:
            for s in sums:
                if s.events + s.shed != s.scalers.get("beam", -1) or s.closed != "complete":
                    self.drift.append({"run": s.run, "spill": s.spill, "events": s.events,
                                       "shed": s.shed, "beam": s.scalers.get("beam"),
                                       "closed": s.closed})
            closed(ra, sums)

        mon._closed = check


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def _workers(stack: LocalStack) -> tuple[int, int]:
    """(processed, kept) by every worker so far."""
    ws = [stack.services[n] for n in stack.worker_names()]
    return (sum(int(w.metrics.events._value.get()) for w in ws),  # type: ignore[attr-defined]
            sum(int(w.metrics.kept._value.get()) for w in ws))  # type: ignore[attr-defined]


def _recorded(files: list[Path]) -> int:
    n = 0
    for f in files:
        msgs, _ = read_all(f)
        n += sum(m.count for m in msgs if m.kind is Kind.ACCEPTED)
        del msgs
    return n


async def _one_run(stack: LocalStack, soak: Soak, before: dict[str, int]) -> dict[str, Any]:
    """Take one run and collect its chain of totals; `before`: the cumulative counters."""
    soak.sent = 0
    record = await stack.take_run(spills=soak.per_run)
    b = stack.builder.builder.stats["live"]
    processed, kept = _workers(stack)
    mon = stack.monitor.run_summaries[-1]  # the run's totals, published at its close
    ra = stack.monitor.analyses["live"]
    rec = stack.recorder.rec
    files = rec.files[before["files"]:]
    chain = {"run": record.get("run"), "record_spills": record.get("spills"),
             "record_events": record.get("events"), "stop_reason": record.get("stop_reason"),
             "sent": soak.sent, "built": b.events - before["built"],
             "shed": b.shed - before["shed"], "processed": processed - before["processed"],
             "monitored": mon["events"], "monitor_shed": mon["shed"], "monitor_run": mon["run"],
             "kept": kept - before["kept"], "files": files,
             "run_files": [f.name for f in files], "spills_closed": ra.closed_spills,
             "forced": ra.forced_spills,
             "recorder_incomplete_spills": rec.incomplete_spills - before["incomplete"],
             "refused": dict(+b.refused)}
    before.update(built=b.events, shed=b.shed, processed=processed, kept=kept,
                  files=len(rec.files), incomplete=rec.incomplete_spills)
    return chain


def _judge(chain: dict[str, Any], per_run: int) -> None:
    """Read the run's file back (after the soak: reading a file makes garbage of its own,
    which would count in the memory figures) and check the run's chain of totals."""
    files = chain.pop("files")
    chain["recorded"] = _recorded(files)
    chain["ok"] = (chain["sent"] == chain["built"] + chain["shed"]
                   and chain["built"] == chain["processed"] == chain["monitored"]
                   == chain["record_events"]
                   and chain["shed"] == chain["monitor_shed"]
                   and chain["kept"] == chain["recorded"]
                   and chain["monitor_run"] == chain["run"]
                   and chain["spills_closed"] == chain["record_spills"] == per_run
                   and chain["forced"] == 0 and chain["recorder_incomplete_spills"] == 0
                   and len(files) == 1 and not chain["refused"])


async def soak(a: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    per_run = a.spills // a.runs
    cfg = StackConfig.parse({
        "run_dir": str(run_dir), "workers": a.workers,
        "simulator": {"spills": per_run, "pace": "max",
                      "sim": {"generated_s": a.generated_s, "seed": a.seed,
                              "slice_events": a.slice_events}},
    }).inproc("soak")
    stack = LocalStack(cfg, metrics=False)
    stack.build()
    s = Soak(a, per_run)
    stack.frontend.on_emit = s.on_emit
    s.watch(stack.monitor)
    runs: list[dict[str, Any]] = []
    before = {"built": 0, "shed": 0, "processed": 0, "kept": 0, "files": 0, "incomplete": 0}
    async with stack:
        for _ in range(a.runs):
            runs.append(await _one_run(stack, s, before))
            s.runs_done += 1
            # between runs: the services stand, no run is open
            s.between.append({**s.sample(s.runs_done * per_run), "run": runs[-1]["run"]})
            s.samples.append(s.between[-1])
        held = {"summaries_held": len(stack.monitor.summaries),
                "spectra_held": len(stack.monitor.analyses["live"].spectra),
                "run_summaries_held": len(stack.monitor.run_summaries)}
    for r in runs:
        _judge(r, per_run)
    numbers = [r["run"] for r in runs]
    base = next(x for x in s.samples if x["spill"] >= a.baseline)
    end = s.samples[-1]
    growth = end["held_bytes"] - base["held_bytes"]
    fds_between = [x["fds"] for x in s.between]
    ok = (not s.drift and all(r["ok"] for r in runs)
          and numbers == list(range(numbers[0], numbers[0] + a.runs))
          and growth <= a.rss_allowance_mib * 2**20 and end["fds"] <= base["fds"]
          and max(fds_between) <= fds_between[0])
    return {"ok": ok, "runs": a.runs, "spills_per_run": per_run, "spills": per_run * a.runs,
            "generated_s": a.generated_s, "wall_s": round(time.monotonic() - s.t0, 1),
            "chains": runs, "run_numbers": numbers, **held,
            "drift": s.drift[:20], "drifted_spills": len(s.drift),
            "held_mib": {"at_baseline": mib(base["held_bytes"]), "baseline_spill": base["spill"],
                         "end": mib(end["held_bytes"]), "growth": mib(growth),
                         "allowance": a.rss_allowance_mib, "trimmed": MALLOC_TRIM is not None,
                         "between_runs": [mib(x["held_bytes"]) for x in s.between]},
            "rss_mib": {"at_baseline": mib(base["rss_bytes"]), "end": mib(end["rss_bytes"]),
                        "growth": mib(end["rss_bytes"] - base["rss_bytes"]),
                        "between_runs": [mib(x["rss_bytes"]) for x in s.between]},
            "fds": {"at_baseline": base["fds"], "end": end["fds"],
                    "between_runs": fds_between},
            "samples": s.samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spills", type=int, default=1000, help="spills over all runs")
    p.add_argument("--runs", type=int, default=5,
                   help="runs taken one after the other (they share --spills equally)")
    p.add_argument("--generated-s", type=float, default=0.002,
                   help="seconds of each spill simulated at the full rate (0.002: ~2500 events)")
    p.add_argument("--slice-events", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--every", type=int, default=50, help="sample every N spills")
    p.add_argument("--baseline", type=int, default=100,
                   help="spill (counted over every run) whose memory is the baseline, after "
                        "warm-up")
    p.add_argument("--rss-allowance-mib", type=float, default=20.0,
                   help="growth of the memory held (VmRSS after malloc_trim) from the "
                        "baseline to the end that still passes")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    if a.runs < 1 or a.spills < a.runs or a.spills % a.runs:
        p.error(f"--spills ({a.spills}) must be a multiple of --runs ({a.runs}), at least 1 "
                "spill a run")
    if a.baseline >= a.spills:
        p.error(f"--baseline ({a.baseline}) must be below --spills ({a.spills})")
    with tempfile.TemporaryDirectory(prefix="na64-soak-") as d:
        report = asyncio.run(soak(a, Path(d)))
    text = json.dumps(report, indent=1)
    if a.out is not None:
        a.out.write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
