"""open_run: the events of every kind of run file as numpy, awkward and pandas, per spill,
held against the records of the file (and, for raw files, against the trigger's output)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
from analysis_files import RunFiles

from daq.analysis import AnalysisError, FileKind, open_run
from daq.runfile import RunFileReader
from daq.wire import Kind, Message
from trigger.analyze import iter_features

pytestmark = pytest.mark.slow  # the session's files take a standing run (~5 s)


def _records(path: Path, kind: Kind, spill: int | None = None) -> list[Message]:
    """Data records with events, in (spill, first event) order (workers interleave them)."""
    return sorted((m for m in RunFileReader(path) if m.kind is kind and m.count
                   and (spill is None or m.spill == spill)), key=lambda m: (m.spill, m.first))


def _cat(msgs: list[Message], name: str) -> np.ndarray:
    return np.concatenate([m.arrays[name] for m in msgs])


@pytest.mark.parametrize("which", ["recorded", "replay", "recorded_wave"])
def test_recorded_events_are_the_accepted_records(run_files: RunFiles, which: str) -> None:
    path = getattr(run_files, which)
    run = open_run(path)
    assert run.kind is FileKind.RECORDED and run.spills == (0, 1)
    assert run.replay is (which == "replay")
    for spill in run.spills:
        acc = _records(path, Kind.ACCEPTED, spill)
        ev = run.events(spill=spill)
        assert len(ev) == sum(m.count for m in acc) > 0
        assert ak.all(ev.spill == spill) and ak.all(ev.run == acc[0].run)
        for name in ("event", "ts", "e_ecal", "e_ps", "e_veto", "bits", "cond", "missing"):
            np.testing.assert_array_equal(ak.to_numpy(ev[name]), _cat(acc, name))
        np.testing.assert_array_equal(ak.to_numpy(ev.e_hcal), _cat(acc, "e_hcal"))
        for board in ("BEAM", "ECAL", "HCAL"):
            if which == "recorded_wave":  # full waveforms: (samples, channels) per event
                np.testing.assert_array_equal(ak.to_numpy(ev[board].wave),
                                              _cat(acc, f"{board}.wave"))
            else:  # hits: jagged, as many per event as its nhit
                np.testing.assert_array_equal(ak.to_numpy(ak.num(ev[board])),
                                              _cat(acc, f"{board}.nhit"))
                np.testing.assert_array_equal(ak.to_numpy(ak.flatten(ev[board].amp)),
                                              _cat(acc, f"{board}.hit_amp"))
                np.testing.assert_array_equal(ak.to_numpy(ak.flatten(ev[board].ch)),
                                              _cat(acc, f"{board}.hit_ch"))


@pytest.mark.parametrize("which", ["raw", "raw_wave"])
def test_raw_events_are_every_event_built_and_triggered(run_files: RunFiles,
                                                        which: str) -> None:
    path = getattr(run_files, which)
    run = open_run(path)
    assert run.kind is FileKind.RAW and run.trigger_configs() == {}
    feats = [m for m in iter_features(path) if m.kind is Kind.FEATURES]
    whole = run.arrays()
    assert len(whole) == sum(m.count for m in feats) == 5091
    for name in ("e_ecal", "e_hcal", "mult", "bits", "ts"):
        np.testing.assert_array_equal(whole.columns[name], _cat(feats, name))
    ev = run.events(spill=1)
    raw = [m for m in _records(path, Kind.SLICE, 1) if m.board == "ECAL"]
    np.testing.assert_array_equal(ak.to_numpy(ev.event), np.arange(len(ev)))
    np.testing.assert_array_equal(ak.to_numpy(ak.num(ev.ECAL)), _cat(raw, "nhit"))
    field = "wave" if which == "raw_wave" else "amp"
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(ev.ECAL[field])),
                                  _cat(raw, f"hit_{field}"))


def test_truth_columns_and_pandas(run_files: RunFiles) -> None:
    run = open_run(run_files.truth)
    assert run.kind is FileKind.TRUTH
    df = run.to_pandas()
    truth = _records(run_files.truth, Kind.SLICE)
    assert len(df) == 5091
    np.testing.assert_array_equal(df["species"].to_numpy(), _cat(truth, "species"))
    np.testing.assert_array_equal(df["e_hcal3"].to_numpy(), _cat(truth, "e_hcal")[:, 2])
    np.testing.assert_array_equal(df["pileup_VETO"].to_numpy(), _cat(truth, "pileup")[:, 3])
    assert list(df.columns[:4]) == ["run", "spill", "event", "ts"]


def test_numpy_pandas_and_spill_errors(run_files: RunFiles) -> None:
    run = open_run(run_files.recorded)
    cols = run.to_numpy(spill=0)
    df = run.to_pandas(spill=0)
    assert len(df) == len(cols["e_ecal"]) and cols["e_hcal"].shape == (len(df), 4)
    np.testing.assert_array_equal(df["e_hcal4"].to_numpy(), cols["e_hcal"][:, 3])
    assert [s for s, _ in run.iter_spills()] == [0, 1]
    assert run.trigger_configs()[0]["ecal_max_gev"] == 90.0
    assert run.config["run"] == run.number
    with pytest.raises(AnalysisError, match=r"no spill 7 \(spills \[0, 1\]\)"):
        run.events(spill=7)
