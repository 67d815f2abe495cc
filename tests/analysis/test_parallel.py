"""`na64daq analyze RUN...` on Dask: the same JSON as the files analysed one by one, on a
local cluster of threads (fast), of processes (the CLI's default) and on an existing
cluster by its scheduler's address."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from analysis_files import RunFiles

from daq.analysis.parallel import analyze_many, analyze_serial
from daq.cli import main

pytestmark = pytest.mark.slow  # the session's files take a standing run (~5 s)


@pytest.fixture(scope="module")
def eight(run_files: RunFiles, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight run files: the session's five of every kind with events, three more raw."""
    tmp = tmp_path_factory.mktemp("eight")
    more = []
    for seed in (21, 22, 23):
        out = tmp / f"raw{seed}.na64"
        assert main(["simulate", "--spills", "2", "--intensity", "3e6", "--generated-s",
                     "0.002", "--seed", str(seed), "--quiet", "--out", str(out)]) == 0
        more.append(out)
    return [*run_files.kinds().values(), *more]


def _dump(results: list[dict]) -> str:
    return json.dumps(results, indent=1)


def test_dask_threads_give_the_serial_json(eight: list[Path]) -> None:
    serial = analyze_serial(eight)
    assert len(serial) == 8 and not any("error" in r for r in serial)
    assert _dump(analyze_many(eight, workers=2, processes=False)) == _dump(serial)


def test_cli_on_a_local_process_cluster_and_on_a_scheduler(
        eight: list[Path], run_files: RunFiles, capsys: pytest.CaptureFixture[str]) -> None:
    from distributed import LocalCluster

    files = [str(p) for p in eight]
    assert main(["analyze", *files, "--json", "--serial", "--no-progress"]) == 0
    serial = capsys.readouterr().out
    assert [r["file"] for r in json.loads(serial)] == files
    for f, entry in zip(files, json.loads(serial), strict=True):  # 8 runs of one file each
        assert main(["analyze", f, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == entry
    assert main(["analyze", *files, "--json", "--workers", "2", "--no-progress"]) == 0
    assert capsys.readouterr().out == serial
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        assert main(["analyze", *files, "--json", "--scheduler", cluster.scheduler_address,
                     "--no-progress"]) == 0
        assert capsys.readouterr().out == serial
        # a file without events: its entry says why, the others are there, exit code 2
        assert main(["analyze", files[0], str(run_files.truth), "--json", "--scheduler",
                     cluster.scheduler_address, "--no-progress"]) == 2
        out, err = capsys.readouterr()
        first, truth = json.loads(out)
        assert first == json.loads(serial)[0]
        assert truth == {"file": str(run_files.truth), "error": truth["error"]}
        assert truth["error"].startswith(f"{run_files.truth}: nothing to analyze")
        assert "nothing to analyze: it is the simulator's truth" in err
