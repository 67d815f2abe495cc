"""TriggerConfig: defaults, bounds, overrides, geometry checks."""

from __future__ import annotations

import pytest

from daq.errors import ConfigError
from daq.geometry import load_geometry
from trigger.config import (
    BEAM,
    CALIBRATION,
    PHYSICS,
    RANDOM,
    TriggerConfig,
    apply_overrides,
    parse_config,
)


def test_default_is_valid_and_hash_is_stable() -> None:
    cfg = TriggerConfig()
    assert cfg.ecal_max_gev == 90.0
    assert cfg.enabled_mask == PHYSICS | BEAM | RANDOM | CALIBRATION == 15
    again = TriggerConfig.parse(cfg.model_dump(mode="json"))
    assert again == cfg
    assert again.content_hash() == cfg.content_hash()
    assert len(cfg.content_hash()) == 16


def test_every_field_has_a_description() -> None:
    for name, f in TriggerConfig.model_fields.items():
        assert f.description, name


@pytest.mark.parametrize(("field", "value"), [
    ("ecal_max_gev", -1.0), ("ecal_max_gev", 5000.0), ("prescale_beam", 0),
    ("ps_min_gev", 1e9), ("enabled", ["physics", "bogus"]), ("masked_channels", ["ECAL"]),
    ("version", -3),
])
def test_bad_value_names_field_value_and_bound(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as ei:
        TriggerConfig.parse({field: value})
    assert ei.value.field.startswith(field)
    assert str(value).strip("[]'").split("'")[0] in str(ei.value)
    assert ei.value.bound


def test_unknown_field_refused() -> None:
    with pytest.raises(ConfigError) as ei:
        TriggerConfig.parse({"ecal_max": 80})
    assert ei.value.field == "ecal_max"


def test_calibration_window_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="calib_ecal_min_gev"):
        TriggerConfig.parse({"calib_ecal_min_gev": 130.0})


def test_overrides_return_a_new_validated_config() -> None:
    base = TriggerConfig()
    new = apply_overrides(base, ["ecal_max_gev=80", "enabled=physics,beam", "prescale_beam=7",
                                 "masked_channels=ECAL/PS_0_0, HCAL/HCAL4_1_1"],
                          bump_version=True)
    assert new.ecal_max_gev == 80.0 and new.prescale_beam == 7
    assert new.enabled == ("physics", "beam") and new.enabled_mask == PHYSICS | BEAM
    assert new.masked("ECAL") == {"PS_0_0"} and new.masked("HCAL") == {"HCAL4_1_1"}
    assert new.version == base.version + 1
    assert new.content_hash() != base.content_hash()
    assert base.ecal_max_gev == 90.0  # the original is untouched (frozen)
    assert apply_overrides(new, ["masked_channels="]).masked_channels == ()
    assert apply_overrides(base, ['enabled=["random"]']).enabled == ("random",)


@pytest.mark.parametrize("item", ["ecal_max_gev=abc", "ecal_max_gev=0", "nosuch=1", "noequals",
                                  "prescale_random=0.5"])
def test_bad_overrides_raise_config_error(item: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides(TriggerConfig(), [item])


def test_masked_channels_checked_against_geometry() -> None:
    geom = load_geometry()
    ok = parse_config({"masked_channels": ["ECAL/MAIN_2_3", "BEAM/V1"]}, geom)
    assert ok.masked("BEAM") == {"V1"}
    with pytest.raises(ConfigError) as ei:
        parse_config({"masked_channels": ["ECAL/MAIN_9_9"]}, geom)
    assert ei.value.field == "masked_channels" and ei.value.value == "ECAL/MAIN_9_9"
    with pytest.raises(ConfigError, match="no board"):
        apply_overrides(TriggerConfig(), ["masked_channels=FOO/X"], geometry=geom)
