"""Re-analysis at scale: `analyze_file` over many run files in parallel on Dask.

Each file is one task: the analysis of a file is a pass over its records (a raw file's
events are built, triggered and monitored in that pass), and files are independent, so
they spread over workers without any data moving between them; each worker returns the
file's JSON-able report. A local cluster of worker processes is started by default (one
thread each: the kernels are compiled numba that holds the GIL between calls, and a
process per core is what scales); `scheduler` connects to an existing Dask cluster instead
(its workers need na64-daq installed and the files at the same paths). Results come back
in the order of the paths, exactly as `analyze_file` returns them serially.

A file that cannot be analysed (NothingToAnalyze, an unreadable file) gives
`{"file": path, "error": message}` in its place, as it would in a serial loop that went on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daq.analysis.errors import MissingExtra
from daq.errors import DaqError

Progress = Callable[[int, int], None]  # (files done, files)


def analyze_one(path: str, trigger_config: dict[str, Any] | None = None,
                sample: str = "unbiased", blind: bool = True) -> dict[str, Any]:
    """One file's report, or `{"file", "error"}` for a file that cannot be analysed. A
    module-level function of plain arguments, so that Dask can ship it to any worker.
    `blind`: the signal box's count withheld (MonitorConfig.blind)."""
    from daq.analysis.reanalyze import analyze_file
    from monitors.config import MonitorConfig
    from trigger.config import TriggerConfig

    cfg = TriggerConfig.model_validate(trigger_config) if trigger_config is not None else None
    try:
        return analyze_file(path, cfg, MonitorConfig(blind=blind),
                            sample=sample)  # type: ignore[arg-type]
    except DaqError as e:
        return {"file": path, "error": str(e)}


def analyze_serial(paths: Sequence[str | Path], *, trigger_config: Any = None,
                   sample: str = "unbiased", progress: Progress | None = None,
                   blind: bool = True) -> list[dict[str, Any]]:
    """The reports of `paths` one after the other, in this process."""
    cfg = trigger_config.model_dump(mode="json") if trigger_config is not None else None
    out = []
    for i, p in enumerate(paths):
        out.append(analyze_one(str(p), cfg, sample, blind))
        if progress is not None:
            progress(i + 1, len(paths))
    return out


def analyze_many(paths: Sequence[str | Path], *, scheduler: str | None = None,
                 workers: int = 2, processes: bool = True, trigger_config: Any = None,
                 sample: str = "unbiased", progress: Progress | None = None,
                 blind: bool = True) -> list[dict[str, Any]]:
    """The reports of `paths` computed on Dask (module docstring), in the order of
    `paths`. `workers`, `processes`: the local cluster started when no `scheduler` is
    given (threads are for tests: the GIL serialises the Python between kernels)."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise MissingExtra("distributed", "dask", "analyze on Dask") from None
    cfg = trigger_config.model_dump(mode="json") if trigger_config is not None else None
    files = [str(Path(p).resolve()) for p in paths]
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                               dashboard_address=None, silence_logs=40)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = client.map(analyze_one, files, trigger_config=cfg, sample=sample,
                                 blind=blind, pure=False)
            for done, _ in enumerate(as_completed(futures), start=1):
                if progress is not None:
                    progress(done, len(futures))
            results: list[dict[str, Any]] = client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
    # the paths as given, as a serial run names them
    for given, full, res in zip(paths, files, results, strict=True):
        res["file"] = str(given)
        if "error" in res:
            res["error"] = str(res["error"]).replace(full, str(given))
    return results
