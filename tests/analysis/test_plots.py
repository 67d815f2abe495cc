"""`na64daq plot` on every kind of run file: the PNGs are written and decode, and the
numbers they draw (plots.json) are those of the file's events and of `analyze`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from analysis_files import RunFiles

from daq.analysis import open_run
from daq.analysis.plots import PNGS, hcal_edges, spectrum_edges
from daq.analysis.reanalyze import analyze_file
from daq.cli import main
from monitors.config import MonitorConfig
from monitors.identify import sideband_c, signal_box

pytestmark = pytest.mark.slow  # the session's files take a standing run (~5 s)


@pytest.mark.parametrize("which", ["raw", "raw_wave", "recorded", "recorded_wave", "replay"])
def test_plots_of_every_kind_draw_the_files_numbers(
        run_files: RunFiles, which: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = getattr(run_files, which)
    assert main(["plot", str(src), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 4
    for name in PNGS:
        img = mpimg.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[0] > 500 and img.shape[1] > 500, name
    doc = json.loads((tmp_path / "plots.json").read_text())
    cols = open_run(src).arrays().columns
    e = cols["e_ecal"]
    assert doc["events"] == len(e) > 0
    edges = np.array(doc["ecal_spectrum"]["edges"])
    assert sum(doc["ecal_spectrum"]["counts"]) == int(np.count_nonzero(
        (e >= edges[0]) & (e <= edges[-1])))
    # the monitors' definitions, cut (i) included (the file's events carry p and ntrk);
    # the box blind by default
    assert "p" in cols and "ntrk" in cols
    assert doc["plane"]["signal_box"] is None
    assert doc["plane"]["sideband_c"] == int(np.count_nonzero(sideband_c(cols, MonitorConfig())))
    report = analyze_file(src)
    assert [p["spill"] for p in doc["spills"]] == [s["spill"] for s in report["spills"]]
    for p, s in zip(doc["spills"], report["spills"], strict=True):
        mon = s["monitor"] if report["kind"] == "recorded" else s
        if mon["veto_efficiency"]["value"] is not None:
            assert p["veto"] == [mon["veto_efficiency"][k] for k in ("value", "low", "high")]
        if report["kind"] == "recorded":
            assert p["eot"] == [s["eot"][k] for k in ("value", "low", "high")]
        else:
            assert p["eot"][0] == pytest.approx(s["eot"])
        assert p["eot"][1] <= p["eot"][0] <= p["eot"][2]
        if p["pileup"] is not None:
            assert p["pileup"][0] == pytest.approx(mon["pileup_fraction"])
            assert p["pileup"][1] <= p["pileup"][0] <= p["pileup"][2]


def test_unblind_box_and_a_file_without_events(
        run_files: RunFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "monitor.toml"
    cfg.write_text("blind = false\nsignal_ecal_max_gev = 95.0\ntrigger_ecal_max_gev = 99.0\n")
    assert main(["plot", str(run_files.raw), "--out", str(tmp_path / "p"),
                 "--monitor-config", str(cfg)]) == 0
    doc = json.loads((tmp_path / "p" / "plots.json").read_text())
    cols = open_run(run_files.raw).arrays().columns
    wide = MonitorConfig(blind=False, signal_ecal_max_gev=95.0, trigger_ecal_max_gev=99.0)
    assert doc["plane"]["signal_box"] == int(np.count_nonzero(signal_box(cols, wide))) > 0
    assert main(["plot", str(run_files.raw), "--out", str(tmp_path / "u"), "--unblind"]) == 0
    doc = json.loads((tmp_path / "u" / "plots.json").read_text())
    assert doc["plane"]["signal_box"] == int(np.count_nonzero(signal_box(cols,
                                                                         MonitorConfig())))
    assert main(["plot", str(run_files.truth), "--out", str(tmp_path / "t")]) == 2
    assert "nothing to analyze: it is the simulator's truth" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_bins_are_fine_around_threshold_and_peak() -> None:
    edges = spectrum_edges(100.0, 1.5)
    widths = dict(zip(edges[:-1], np.diff(edges), strict=True))
    assert widths[89.5] == widths[90.0] == widths[100.0] == 0.5
    assert widths[10.0] == 2.0 and widths[120.0] == 2.5
    assert edges[0] == 0.0 and edges[-1] == 150.0
    h = hcal_edges(150.0, 1.0)
    assert list(h[:5]) == [0.0, 0.25, 0.5, 0.75, 1.0] and h[-1] == pytest.approx(150.0)
