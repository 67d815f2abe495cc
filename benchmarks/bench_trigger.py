"""Benchmark of the trigger's waveform kernel (trigger/bench.py); prints one JSON document.

    python benchmarks/bench_trigger.py [--events 16384] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json

from trigger.bench import kernel_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(json.dumps(kernel_bench(a.events, a.repeat), indent=1))


if __name__ == "__main__":
    main()
