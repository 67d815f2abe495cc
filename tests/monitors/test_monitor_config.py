"""MonitorConfig: bounds, files, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from daq.cli import main
from daq.errors import ConfigError
from monitors.config import MonitorConfig, load_config


def test_bad_values_name_field_value_and_bound() -> None:
    with pytest.raises(ConfigError) as e:
        MonitorConfig.parse({"veto_zero_gev": -1})
    assert e.value.field == "veto_zero_gev" and e.value.value == -1
    with pytest.raises(ConfigError, match="srd_min_gev"):
        MonitorConfig.parse({"srd_min_gev": 0.5, "srd_max_gev": 0.1})
    with pytest.raises(ConfigError, match="band low"):
        MonitorConfig.parse({"alarms": {"pileup": {"low": 0.5, "high": 0.1}}})
    with pytest.raises(ConfigError) as e:
        MonitorConfig.parse({"no_such_field": 1})
    assert e.value.field == "no_such_field"


def test_zero_thresholds_sit_between_noise_and_a_mip() -> None:
    """A few times the summed channel noise, far below the smallest neighbour signal."""
    from daq.geometry import load_calibration, load_geometry
    from trigger.config import TriggerConfig

    geom = load_geometry()
    cal = load_calibration(geom)
    cfg = MonitorConfig()
    zthr = TriggerConfig().zero_threshold_adc  # channels below this read zero
    for board, thr, mip in (("VETO", cfg.veto_zero_gev, 2 * 0.010),
                            ("HCAL", cfg.hcal_zero_gev, 3 * 2.0)):
        gain = float(cal.gain[board].min())
        one_channel = zthr / gain  # the smallest non-zero a channel can add
        assert 1.0 * one_channel < thr < 0.5 * mip, board


def test_load_config_files(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text("blind = true\n[alarms]\nno_spill_s = 5\n")
    cfg = load_config(p)
    assert cfg.blind and cfg.alarms.no_spill_s == 5
    (tmp_path / "bad.toml").write_text("blind = [")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.toml")


def test_monitor_command_refuses_bad_mqtt(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--mqtt", "nohostport"]) == 2
    assert "--mqtt" in capsys.readouterr().err
