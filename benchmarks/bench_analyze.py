"""Re-analysis at scale: `analyze` over many run files, serial and on Dask, 1 vs N workers.

Run:  python benchmarks/bench_analyze.py RUN... [--workers 1 2] [--repeat 3] [--json]

For each setting, `--repeat` passes of the whole list: serial in this process
(daq.analysis.parallel.analyze_serial), then a local Dask cluster of 1, 2, ... worker
processes (one thread each), timing the cluster's start (with each worker analysing the
first file once, as the serial process has) apart from the analysis; the settings take
turns within each pass. Every pass must give the same JSON as the first serial one (it
stops otherwise). Rates are over the analysis alone. A benchmark, not a test: the figures
depend on the machine and on what else runs on it (docs/performance.md says what it ran
beside).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from daq.analysis.parallel import analyze_one, analyze_serial


def _warm(path: str) -> None:
    """Load what a file's analysis loads on its first call (numba's cached kernels, the
    geometry, the models), as a worker of a long campaign has after its first file."""
    analyze_one(path)


def _dask(paths: list[str], workers: int) -> tuple[float, float, str]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    client = Client(cluster)
    client.run(_warm, paths[0])  # a long campaign pays this once per worker
    t1 = time.perf_counter()
    results = client.gather(client.map(analyze_one, paths, pure=False))
    t2 = time.perf_counter()
    client.close()
    cluster.close()
    return t1 - t0, t2 - t1, json.dumps(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    paths = [os.path.abspath(p) for p in a.files]
    ref = json.dumps(analyze_serial(paths))  # also warms the numba cache
    rows: dict[str, Any] = {"serial": {"start_s": [], "analysis_s": [], "load": []},
                            **{f"dask {w}": {"start_s": [], "analysis_s": [], "load": []}
                               for w in a.workers}}
    # the settings take turns within each pass, so that a machine shared with other work
    # loads them alike
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        out = json.dumps(analyze_serial(paths))
        row = rows["serial"]
        row["start_s"].append(0.0)
        row["analysis_s"].append(time.perf_counter() - t0)
        row["load"].append(os.getloadavg()[0])
        assert out == ref, "serial pass differs"
        for w in a.workers:
            start, took, out = _dask(paths, w)
            assert out == ref, f"{w} workers: the JSON differs from the serial run"
            row = rows[f"dask {w}"]
            row["start_s"].append(start)
            row["analysis_s"].append(took)
            row["load"].append(os.getloadavg()[0])
    events = sum(r.get("events", 0) for r in json.loads(ref))
    if a.json:
        print(json.dumps({"files": len(paths), "events": events, "cpus": os.cpu_count(),
                          "load": os.getloadavg(), "runs": rows}, indent=1))
        return
    print(f"{len(paths)} files, {events:,} events; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cpus; median (min) of {a.repeat} passes, identical JSON each")
    for name, r in rows.items():
        took = r["analysis_s"]
        start = statistics.median(r["start_s"])
        med = statistics.median(took)
        print(f"  {name:<8} cluster start {start:5.2f} s  analysis {med:6.2f} s "
              f"(min {min(took):.2f})  {len(paths) / med:5.2f} files/s  "
              f"{events / med / 1e3:7.1f} k events/s")


if __name__ == "__main__":
    main()
