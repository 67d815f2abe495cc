"""The detector model: the shipped geometry loads and validates; bad files name the field."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest
import tomli_w

from daq.errors import ConfigError
from daq.geometry import load_calibration, load_geometry


def _default() -> dict:
    return tomllib.loads(resources.files("daq").joinpath("geometry.toml").read_text())


def _write(tmp_path: Path, data: dict, name: str = "g.toml") -> Path:
    p = tmp_path / name
    p.write_text(tomli_w.dumps(data))
    return p


def test_default_geometry_matches_the_design() -> None:
    g = load_geometry()
    assert g.board_names == ["BEAM", "SRD", "ECAL", "VETO", "HCAL"]
    assert [c.name for c in g.board("BEAM").channels] == ["S1", "S2", "S3", "V1", "P", "TRK"]
    assert g.n_channels("SRD") == 3
    assert g.n_channels("ECAL") == 60
    assert len(g.board("ECAL").indices("PS")) == 30
    assert len(g.board("ECAL").indices("MAIN")) == 30
    assert g.n_channels("VETO") == 6
    assert g.n_channels("HCAL") == 36
    assert all(len(g.board("HCAL").indices(f"HCAL{m}")) == 9 for m in range(1, 5))
    assert (g.detector.samples, g.detector.sample_ns, g.detector.adc_max) == (32, 12.5, 4095)


def test_geometry_hash_is_content_based(tmp_path: Path) -> None:
    same = _write(tmp_path, _default())
    assert load_geometry(same).hash == load_geometry().hash
    data = _default()
    data["boards"][3]["window_ns"] = 55.0
    assert load_geometry(_write(tmp_path, data, "h.toml")).hash != load_geometry().hash


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["detector"].__setitem__("samples", 2), "detector.samples"),
        (lambda d: d["boards"][0].__setitem__("window_ns", -5.0), "boards.0.window_ns"),
        (lambda d: d["boards"][2]["channels"][0].__setitem__("name", "bad name"),
         "boards.2.channels.0.name"),
        (lambda d: d["boards"][1].__setitem__("colour", "red"), "boards.1.colour"),
        (lambda d: d["detector"].pop("noise"), "detector.noise"),
    ],
)
def test_bad_geometry_names_the_field(tmp_path: Path, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    data = _default()
    edit(data)
    with pytest.raises(ConfigError) as e:
        load_geometry(_write(tmp_path, data))
    assert e.value.field == field
    assert field in str(e.value)


def test_duplicate_channel_is_refused(tmp_path: Path) -> None:
    data = _default()
    data["boards"][0]["channels"][1]["name"] = "S1"
    with pytest.raises(ConfigError, match="duplicate channel names"):
        load_geometry(_write(tmp_path, data))


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_geometry(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[detector\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_geometry(bad)


def test_calibration_resolves_and_hashes(tmp_path: Path) -> None:
    g = load_geometry()
    cal = load_calibration(g)
    ecal = g.board("ECAL")
    assert cal.gain["ECAL"][ecal.indices("PS")].tolist() == [150.0] * 30
    assert cal.gain["ECAL"][ecal.indices("MAIN")].tolist() == [30.0] * 30
    assert cal.pedestal["HCAL"].tolist() == [400.0] * 36
    p = tmp_path / "cal.toml"
    p.write_text('version = "x"\n[channels."ECAL/MAIN_2_3"]\ngain = 41.5\n')
    cal2 = load_calibration(g, p)
    i = [c.name for c in ecal.channels].index("MAIN_2_3")
    assert cal2.gain["ECAL"][i] == pytest.approx(41.5)
    assert cal2.hash != cal.hash
    # the label alone does not change the identity; the content does
    p.write_text('version = "renamed"\n[channels."ECAL/MAIN_2_3"]\ngain = 41.5\n')
    assert load_calibration(g, p).hash == cal2.hash


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[channels."ECAL/NOPE"]\ngain = 1.0\n', "channels.ECAL/NOPE"),
        ("[boards.TPC]\ngain = 1.0\n", "boards.TPC"),
        ("[boards.ECAL]\ngain = -3.0\n", "boards.ECAL.gain"),
        ("[boards.ECAL]\ngian = 3.0\n", "boards.ECAL.gian"),
        ('[default]\npedestal = "high"\n', "default.pedestal"),
        ("[extras]\nx = 1\n", "extras"),
    ],
)
def test_bad_calibration_names_the_field(tmp_path: Path, body: str, field: str) -> None:
    p = tmp_path / "cal.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_calibration(load_geometry(), p)
    assert e.value.field == field
