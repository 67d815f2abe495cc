"""Soak: a long run in compressed time; memory, open files and counts must not drift.

    python scripts/soak.py --spills 1000 --generated-s 0.002 --out soak.json

Every service runs in this process (daq.app.Pipeline on inproc transports, two trigger
workers), as fast as the simulator can generate. Every `--every` spills it samples the
process's resident memory (VmRSS) and its open file descriptors; every spill the monitor
closes is checked: events processed + events shed == the BEAM board's count. At the end it
checks the chain of totals (front ends -> builder -> workers -> monitor, recorder) and
prints a JSON report; exit status 1 if anything drifted or grew beyond the allowance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daq.app import Factory, Pipeline
from daq.runfile import read_all
from daq.stack import StackConfig
from daq.transport import context
from daq.wire import Kind


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def soak(a: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    cfg = StackConfig.parse({
        "run_dir": str(run_dir), "workers": a.workers,
        "simulator": {"spills": a.spills, "pace": "max",
                      "sim": {"generated_s": a.generated_s, "seed": a.seed,
                              "slice_events": a.slice_events, "run": 1}},
    }).inproc("soak")
    pipe = Pipeline(cfg, metrics=False)
    pipe.build(Factory(cfg, ctx=context()))
    samples: list[dict[str, Any]] = []
    sent = {"events": 0}
    drift: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def on_emit(em: Any) -> None:
        m = em.msg
        if em.src != "BEAM":
            return
        if m.kind is Kind.SLICE:
            sent["events"] += m.count
        if m.kind is Kind.SPILL_START and m.spill % a.every == 0:
            samples.append({"spill": m.spill, "rss_bytes": rss_bytes(), "fds": open_fds(),
                            "t_s": round(time.monotonic() - t0, 2)})

    pipe.services["frontend"].on_emit = on_emit  # type: ignore[attr-defined]
    mon = pipe.monitor
    closed = mon._closed

    def check(ra: Any, sums: list[Any]) -> None:
        for s in sums:
            if s.events + s.shed != s.scalers.get("beam", -1) or s.closed != "complete":
                drift.append({"spill": s.spill, "events": s.events, "shed": s.shed,
                              "beam": s.scalers.get("beam"), "closed": s.closed})
        closed(ra, sums)

    mon._closed = check  # type: ignore[method-assign]
    async with contextlib.AsyncExitStack() as stack:
        await pipe.run(stack, settle_s=60)
        for s in pipe.services.values():
            await s.wait()
    samples.append({"spill": a.spills, "rss_bytes": rss_bytes(), "fds": open_fds(),
                    "t_s": round(time.monotonic() - t0, 2)})
    b = pipe.builder.builder.stats["live"]
    ra = mon.analyses["live"]
    tot = ra.totals()
    workers = pipe.workers()
    processed = sum(int(w.metrics.events._value.get()) for w in workers)
    kept = sum(int(w.metrics.kept._value.get()) for w in workers)
    rec = pipe.recorder.rec
    recorded = 0
    for f in rec.files:
        msgs, _ = read_all(f)
        recorded += sum(m.count for m in msgs if m.kind is Kind.ACCEPTED)
        del msgs
    chain = {"sent": sent["events"], "built": b.events, "shed": b.shed,
             "processed": processed, "monitored": tot.events, "monitor_shed": tot.shed,
             "kept": kept, "recorded": recorded, "run_files": len(rec.files),
             "spills_closed": ra.closed_spills, "forced": ra.forced_spills,
             "recorder_incomplete_spills": rec.incomplete_spills,
             "summaries_held": len(mon.summaries), "spectra_held": len(ra.spectra)}
    base = next(s for s in samples if s["spill"] >= a.baseline)
    end = samples[-1]
    growth = end["rss_bytes"] - base["rss_bytes"]
    ok = (not drift and chain["sent"] == chain["built"] + chain["shed"]
          and chain["built"] == chain["processed"] == chain["monitored"]
          and chain["kept"] == chain["recorded"]
          and chain["spills_closed"] == a.spills and chain["forced"] == 0
          and growth <= a.rss_allowance_mib * 2**20 and end["fds"] <= base["fds"])
    return {"ok": ok, "spills": a.spills, "generated_s": a.generated_s,
            "wall_s": round(time.monotonic() - t0, 1), "chain": chain,
            "drift": drift[:20], "drifted_spills": len(drift),
            "rss_mib": {"at_baseline": round(base["rss_bytes"] / 2**20, 1),
                        "baseline_spill": base["spill"],
                        "end": round(end["rss_bytes"] / 2**20, 1),
                        "growth": round(growth / 2**20, 1),
                        "allowance": a.rss_allowance_mib},
            "fds": {"at_baseline": base["fds"], "end": end["fds"]},
            "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spills", type=int, default=1000)
    p.add_argument("--generated-s", type=float, default=0.002,
                   help="seconds of each spill simulated at the full rate (0.002: ~2500 events)")
    p.add_argument("--slice-events", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--every", type=int, default=50, help="sample every N spills")
    p.add_argument("--baseline", type=int, default=100,
                   help="spill whose memory is the baseline (after warm-up)")
    p.add_argument("--rss-allowance-mib", type=float, default=20.0,
                   help="growth of VmRSS from the baseline to the end that still passes")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="na64-soak-") as d:
        report = asyncio.run(soak(a, Path(d)))
    text = json.dumps(report, indent=1)
    if a.out is not None:
        a.out.write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
