"""This tree's waveform kernels against another version's, side by side in one run.

    git show main:trigger/kernels.py > /tmp/kernels_main.py
    taskset -c 1 python benchmarks/ab_kernels.py /tmp/kernels_main.py [--rounds 3]

Prints M events/s per round (trigger.bench.kernel_ab), the median and spread, and the
ratio to the baseline per round. A baseline from before wave_peak_board (the full-waveform
correction in the board's pass) is run as the trigger ran it then: wave_board, then
peak_board.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from trigger.bench import kernel_ab


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"baseline_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # numba's cache finds the kernels' module by its name
    spec.loader.exec_module(mod)
    if not hasattr(mod, "wave_peak_board"):
        def wave_peak_board(wave: Any, live: Any, n_ped: int, pulse_thr: float, adc_max: int,
                            trig: int, sample_ns: float, extra: bool, pulses: bool,
                            peak_thr: float, corr: Any, amp: Any, tpeak: Any, npulse: Any,
                            integral: Any, sat: Any) -> None:
            mod.wave_board(wave, live, n_ped, pulse_thr, adc_max, trig, sample_ns, extra,
                           pulses, amp, tpeak, npulse, integral, sat)
            mod.peak_board(wave, n_ped, peak_thr, corr, amp)
        mod.wave_peak_board = wave_peak_board  # type: ignore[attr-defined]
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path, help="a trigger/kernels.py of another version")
    ap.add_argument("--events", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    r = kernel_ab(_load(a.baseline), a.events, a.repeat, a.rounds)
    for name, v in r.items():
        print(f"{name:14s} M events/s per round {' '.join(f'{x:.3f}' for x in v)}; median "
              f"{statistics.median(v):.3f}, range {min(v):.3f}-{max(v):.3f}")
    for kind in ("full", "zs"):
        ratios = [x / b for x, b in zip(r[kind], r[f"{kind}_baseline"], strict=True)]
        print(f"{kind}: this tree / baseline per round {' '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
