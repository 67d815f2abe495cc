"""Helpers of the reliability tests: simulated board streams, garbage, metric reads."""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

from fuzz_targets import mutate
from prometheus_client import CollectorRegistry

from daq.errors import WireError
from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from daq.service import Loop, Service
from daq.wire import Message, decode, encode
from simulators.config import FaultConfig, SimConfig
from simulators.frontend import FrontEnds
from simulators.generator import Simulator

GEOM: Geometry = load_geometry()
CALIB: Calibration = load_calibration(GEOM)


def board_stream(spills: int = 2, *, generated_s: float = 0.002, seed: int = 3,
                 run: int = 1, truth: bool = False, **faults: Any) -> list[Message]:
    """Every board message of a small simulated run, in sending order (truth if asked)."""
    sim = Simulator(SimConfig.parse({"generated_s": generated_s, "seed": seed, "run": run,
                                     "slice_events": 256}), GEOM, CALIB,
                    FaultConfig.parse(faults))
    return [em.msg for em in FrontEnds(sim, spills=spills, truth=truth).run()
            if truth or em.src != "TRUTH"]


def garbage(n: int, seed: int = 11) -> list[list[bytes]]:
    """`n` multipart messages that decode() refuses: damaged valid messages and noise."""
    from fuzz_targets import sample_messages

    rng = random.Random(seed)
    encoded = [encode(m) for m in sample_messages()]
    out: list[list[bytes]] = []
    while len(out) < n:
        if rng.random() < 0.3:
            frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 4))]
        else:
            frames = mutate(rng.choice(encoded), rng.randbytes(4 * rng.randrange(1, 4)))
        try:
            decode(frames)
        except WireError:
            out.append(frames)
    return out


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return float(reg.get_sample_value(name, labels) or 0.0)


def total(reg: CollectorRegistry, name: str) -> float:
    """Sum of every sample of a metric family (all label values)."""
    return sum(s.value for fam in reg.collect() for s in fam.samples if s.name == name)


def stack_config(tmp: Any, tag: str, *, spills: int, sim: dict[str, Any],
                 workers: int = 2, pace: str = "max", factor: float = 1.0,
                 builder: dict[str, Any] | None = None,
                 faults: dict[str, Any] | None = None) -> Any:
    """An in-process topology on inproc endpoints, no /metrics servers."""
    from daq.stack import StackConfig

    return StackConfig.parse({
        "run_dir": str(tmp), "workers": workers,
        "simulator": {"spills": spills, "pace": pace, "factor": factor, "sim": sim,
                      "faults": faults or {}},
        "builder": builder or {},
    }).inproc(tag)


def vm_rss() -> int:
    """Resident set size of this process, bytes (Linux)."""
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def builder_events(pipe: Any) -> tuple[int, int]:
    st = pipe.builder.builder.stats["live"]
    return st.events, st.shed


class ProcessFrontEnds(Service):
    """The front ends as a process of their own (`na64daq simulate --to ENDPOINT`): a beam
    that keeps its schedule whatever the services under test do. In-process, the simulator
    shares the event loop and the GIL with them; under load it fell behind its schedule
    and then sent the spills it owed in one burst, which no beam does."""

    name = "frontend"

    def __init__(self, endpoint: str, args: list[str]) -> None:
        super().__init__()
        self.argv = [sys.executable, "-m", "daq.cli", "simulate", "--to", endpoint,
                     "--quiet", *args]
        self.stdout = ""

    def loops(self) -> dict[str, Loop]:
        return {"process": self._process}

    async def _process(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        done = asyncio.ensure_future(proc.communicate())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if proc.returncode is None:
                proc.kill()
            out, err = await done
        self.stdout = out.decode()
        if proc.returncode != 0 and not self.stopping.is_set():
            raise RuntimeError(f"front ends exited {proc.returncode}: {err.decode()[-2000:]}")
