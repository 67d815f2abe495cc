"""Fuzz the control plane's input handlers (issue 20): a bounded random loop, or atheris.

    python scripts/fuzz_control.py [--count 1000000] [--seed 20] [--target NAME ...]
    python scripts/fuzz_control.py -atheris_runs=1000000 -max_len=4096   # coverage-guided

Targets (tests/control/fuzz_targets.py): runcontrol (MQTT requests through parse, plan,
commit; may raise ProtocolError only), loads (daq.agent.loads; ValueError only), take
(the conductor's `_take`; nothing), command (the agent's `_command`; nothing, a reply).
Inputs: mutated JSON documents of the fields these handlers read (wrong types, huge and
non-finite numbers, long strings, lone surrogates), nesting up to 100,000 deep, integers
of up to 70,000 digits, random bytes, a flipped byte (invalid UTF-8) in a fifth of them.
The loop needs nothing but the project; it prints one line per target: inputs, seconds,
crashes (distinct kinds, with a sample), and exits 1 if any target crashed.

With `-atheris...` arguments (atheris, the `fuzz` extra) the first byte of each input
chooses the target; a crash ends the run and writes the input to `crash-<hash>`.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def fuzz_atheris(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        from tests.control import fuzz_targets as F
        from tests.reliability.fuzz_targets import check_control

    rc, at, lo = F.RunControlTarget(), F.AsyncTargets(), F.LoadsTarget()
    targets = [(rc, rc.allowed), (lo, (ValueError,)), (at.command, ()), (at.take, ())]

    def one_input(data: bytes) -> None:
        if not data:
            return
        if data[0] % 5 == 4:  # the earlier contract: parse alone, on one of the topics
            check_control(F.TOPICS[data[-1] % len(F.TOPICS)] if len(data) > 1 else "",
                          data[1:])
            return
        fn, allowed = targets[data[0] % 5]
        F.check(fn, allowed, data[1:])

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def main() -> int:
    logging.disable(logging.CRITICAL)  # each refused document is logged: millions of lines
    if any(a.startswith("-atheris") for a in sys.argv[1:]):
        fuzz_atheris(sys.argv)
        return 0
    from tests.control.fuzz_targets import (
        AsyncTargets,
        LoadsTarget,
        RunControlTarget,
        random_input,
    )

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--target", action="append",
                   choices=("runcontrol", "loads", "take", "command"))
    args = p.parse_args()
    rc, at = RunControlTarget(), AsyncTargets()
    targets = {"runcontrol": (rc, rc.allowed), "loads": (LoadsTarget(), (ValueError,)),
               "take": (at.take, ()), "command": (at.command, ())}
    crashed = False
    try:
        for name in args.target or list(targets):
            fn, allowed = targets[name]
            rng = random.Random(f"{args.seed}-{name}")
            crashes: dict[str, bytes] = {}
            n_crash = 0
            t0 = time.perf_counter()
            for _ in range(args.count):
                data = random_input(rng)
                try:
                    fn(data)
                except allowed:
                    pass
                except Exception as e:  # what the run looks for: count, keep a sample
                    n_crash += 1
                    crashes.setdefault(f"{type(e).__name__}: {str(e)[:70]}", data[:100])
            dt = time.perf_counter() - t0
            print(f"{name}: {args.count} inputs in {dt:.1f} s, {n_crash} crashes"
                  + "".join(f"\n  {k}\n    e.g. {v!r}" for k, v in list(crashes.items())[:5]),
                  flush=True)
            crashed |= n_crash > 0
    finally:
        at.close()
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
