"""`na64daq analyze` keeps the signal box blind unless asked (--unblind), and prints the
sideband C and dimuon counts either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daq.cli import main


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw file with A' and dimuons injected at 1 % (enough for a few of each)."""
    out = tmp_path_factory.mktemp("unblind") / "raw.na64"
    assert main(["simulate", "--out", str(out), "--intensity", "6e6", "--generated-s",
                 "0.003", "--seed", "4", "--set", "signal_rate=0.01", "--set",
                 "dimuon_rate=0.01", "--quiet"]) == 0
    return out


def _totals(raw: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict:
    assert main(["analyze", str(raw), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)["totals"]


def test_the_box_count_is_withheld_unless_unblinded(raw: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    blind = _totals(raw, capsys)
    assert blind["signal_box"] is None
    shown = _totals(raw, capsys, "--unblind")
    assert shown["signal_box"] > 0
    for key in ("sideband_c", "dimuons", "untracked_events"):
        assert blind[key] == shown[key]
    assert shown["dimuons"] > 0 and shown["untracked_events"] == 0
    assert shown["dimuons_per_eot"] == pytest.approx(shown["dimuons"] / shown["eot"])


def test_the_table_says_blind_and_counts_c_and_dimuons(
        raw: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint is printed whole: "[monitor]" is the config section, not rich markup."""
    monkeypatch.setenv("COLUMNS", "200")  # the hint on one line of the table
    assert main(["analyze", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "signal box" in out
    assert "blind (analyze --unblind; live: [monitor] blind = false)" in out
    assert "sideband C" in out and "dimuons" in out
    assert main(["analyze", str(raw), "--unblind"]) == 0
    assert "blind (analyze --unblind" not in capsys.readouterr().out
