"""What docs/wire-format.md ("Writing a front end") and decision 0005 tell an outside author
is enough: the hashes and every prescaled trigger decision follow from the text alone.

The implementations here are written from the documents (plain Python, no project code):
the code under test only supplies what it computed, to be compared with.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from daq.builder import EventBuilder
from daq.geometry import load_calibration, load_geometry
from daq.wire import Kind, decode
from simulators.config import SimConfig
from simulators.frontend import FrontEnds
from simulators.generator import Simulator
from trigger.config import TriggerConfig
from trigger.processor import SliceProcessor

ROOT = Path(__file__).resolve().parents[2]
WIRE = (ROOT / "docs/wire-format.md").read_text()
DECISION = (ROOT / "docs/decisions/0005-trigger.md").read_text()
U64 = (1 << 64) - 1

# --- hashes, as "The geometry and calibration hashes" says --------------------------------

_FLOATS = {"sample_ns", "pedestal", "noise", "window_ns", "pulse_tp_ns"}


def _doc_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _typed(d: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if k in _FLOATS else v for k, v in d.items()}


def _doc_geometry(toml: dict[str, Any]) -> dict[str, Any]:
    return {"detector": _typed(toml["detector"]),
            "boards": [{**_typed({"pulse_tp_ns": 20.0, **b}),
                        "channels": [{"x": None, "y": None, **c} for c in b["channels"]]}
                       for b in toml["boards"]]}


def _doc_calibration(geometry: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    channels = {}
    for b in geometry["boards"]:
        ped, gain = [], []
        for c in b["channels"]:
            v = {"pedestal": geometry["detector"]["pedestal"], "gain": 1.0}
            for entry in (table.get("default", {}), table.get("boards", {}).get(b["name"], {}),
                          table.get("groups", {}).get(f"{b['name']}/{c['group']}", {}),
                          table.get("channels", {}).get(f"{b['name']}/{c['name']}", {})):
                v |= {k: float(x) for k, x in entry.items()}
            ped.append(v["pedestal"])
            gain.append(v["gain"])
        channels[b["name"]] = [ped, gain]
    return {"geometry": _doc_hash(geometry), "channels": channels}


def test_the_default_hashes_follow_the_recipe_and_are_the_ones_the_doc_states() -> None:
    toml_g = tomllib.loads((ROOT / "daq/geometry.toml").read_text())
    toml_c = tomllib.loads((ROOT / "daq/calibration.toml").read_text())
    geometry = _doc_geometry(toml_g)
    g = load_geometry()
    c = load_calibration(g)
    assert _doc_hash(geometry) == g.hash
    assert _doc_hash(_doc_calibration(geometry, toml_c)) == c.hash
    assert f"geometry's hash is `{g.hash}`" in WIRE
    assert f"calibration's hash is `{c.hash}`" in WIRE


def test_the_recipe_holds_for_integers_where_floats_belong_and_omitted_defaults(
        tmp_path: Path) -> None:
    text = """
[detector]
name = "two-boards"
samples = 16
sample_ns = 25
adc_max = 1023
pedestal = 100
noise = 1.5
trigger_sample = 4

[[boards]]
name = "BEAM"
window_ns = 60
channels = [{ name = "S1", group = "S" }, { name = "V1", group = "V" }]

[[boards]]
name = "ECAL"
window_ns = 100.5
pulse_tp_ns = 15
channels = [{ name = "A", group = "MAIN", x = 0, y = 1 }, { name = "B", group = "MAIN" }]
"""
    calib = 'version = "x"\n[default]\ngain = 40\n[channels."ECAL/B"]\npedestal = 101\n'
    (tmp_path / "g.toml").write_text(text)
    (tmp_path / "c.toml").write_text(calib)
    g = load_geometry(tmp_path / "g.toml")
    geometry = _doc_geometry(tomllib.loads(text))
    assert _doc_hash(geometry) == g.hash
    assert _doc_hash(_doc_calibration(geometry, tomllib.loads(calib))) == \
        load_calibration(g, tmp_path / "c.toml").hash


# --- the prescale hash, as decision 0005 states it ----------------------------------------


def _mix_from_the_decision() -> Any:
    """splitmix64 with the constants and shifts read from the decision's code block."""
    block = DECISION[DECISION.index("mix(x):"):]
    block = block[:block.index("```")]
    golden, m1, m2 = (int(h, 16) for h in re.findall(r"0x[0-9A-F]{16}", block))
    s1, s2, s3 = (int(s) for s in re.findall(r">> (\d+)", block))

    def mix(x: int) -> int:
        z = (x + golden) & U64
        z = ((z ^ (z >> s1)) * m1) & U64
        z = ((z ^ (z >> s2)) * m2) & U64
        return z ^ (z >> s3)
    return mix


def _bits_from_the_decision(cond: int, run: int, spill: int, event: int,
                            cfg: TriggerConfig) -> int:
    mix = _mix_from_the_decision()
    base = mix(mix(mix(run) ^ spill))
    h = mix(base ^ event)

    def fires(bit: int, prescale: int) -> bool:
        return mix(h ^ bit) % prescale == 0
    bits = cond & 1
    if cond & 2 and fires(2, cfg.prescale_beam):
        bits |= 2
    if fires(4, cfg.prescale_random):
        bits |= 4
    if cond & 8 and fires(8, cfg.prescale_calibration):
        bits |= 8
    return bits & cfg.enabled_mask


def test_every_prescaled_decision_of_a_simulated_run_follows_from_the_decision() -> None:
    g = load_geometry()
    cal = load_calibration(g)
    cfg = TriggerConfig(prescale_beam=3, prescale_random=5, prescale_calibration=2,
                        enabled=("physics", "beam", "random", "calibration"))
    sim = Simulator(SimConfig.parse({"mode": "feature", "generated_s": 0.002, "seed": 5,
                                     "slice_events": 700, "run": 4242}), g, cal)
    builder = EventBuilder(g, calibration=cal.hash)
    builder.set_trigger_config(cfg.model_dump(mode="json"), "test")
    processor = SliceProcessor(g, cal)
    checked = 0
    per_type = dict.fromkeys((2, 4, 8), 0)
    candidates = dict.fromkeys((2, 4, 8), 0)
    spills = set()
    for em in FrontEnds(sim, spills=2).run():
        for built in builder.feed(decode(em.frames()), 0.0):
            if built.kind is not Kind.SLICE:
                continue
            f = processor.process(built).features
            assert f.meta["cfg"] == built.meta["cfg"]
            spills.add(built.spill)
            for e, (cond, bits) in enumerate(zip(f.arrays["cond"].tolist(),
                                                 f.arrays["bits"].tolist(), strict=True)):
                want = _bits_from_the_decision(cond, built.run, built.spill,
                                               built.first + e, cfg)
                assert bits == want, (built.run, built.spill, built.first + e, cond)
                checked += 1
                for b in per_type:
                    per_type[b] += bool(bits & b)
                    candidates[b] += bool(cond & b)
    assert spills == {0, 1} and checked > 1000
    for b, n in per_type.items():  # every prescale fired on some candidates, not on all
        assert 0 < n < candidates[b], (b, n, candidates[b])
    assert np.isclose(per_type[4] / checked, 1 / 5, atol=5 * np.sqrt(0.16 / checked))
