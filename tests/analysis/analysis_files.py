"""Run files of every kind the system writes, made by the real code:
`na64daq simulate --out` (raw, with its truth), a run of the standing system (LocalStack:
the recorded file) and a replay run of the raw file in that same system."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from daq.cli import main
from daq.stack import StackConfig

SIM = ["--spills", "2", "--intensity", "6e6", "--generated-s", "0.002", "--seed", "5",
       "--slice-events", "512", "--quiet"]


@dataclass(frozen=True)
class RunFiles:
    raw: Path  # simulate --out, feature mode
    truth: Path  # simulate --truth
    raw_wave: Path  # simulate --mode waveform --zero-suppress
    recorded: Path  # the recorder's file of a live run (feature mode)
    replay: Path  # the recorder's file of a replay run of `raw`
    replay_events: int  # events the replay sent (run control's count agreed)
    recorded_wave: Path  # the recorder's file of a live run in waveform mode (full waveforms)

    def kinds(self) -> dict[str, Path]:
        return {"raw": self.raw, "raw_wave": self.raw_wave, "recorded": self.recorded,
                "recorded_wave": self.recorded_wave, "replay": self.replay}


def _stack(tmp: Path, name: str, **sim: object) -> StackConfig:
    return StackConfig.parse({
        "run_dir": str(tmp / name), "workers": 2,
        "metrics": {"frontend": 0, "builder": 0, "recorder": 0, "monitor": 0, "control": 0,
                    "trigger": 0},
        "simulator": {"sim": sim},
    }).inproc(f"analysis-{name}")


async def _waveform_run(tmp: Path) -> Path:
    from daq.app import LocalStack

    async with LocalStack(_stack(tmp, "wave", generated_s=0.001, seed=12, mode="waveform"),
                          metrics=False) as stack:
        await stack.take_run(spills=2)
        return stack.recorder.rec.files[-1]


async def _standing_runs(tmp: Path, raw: Path) -> tuple[Path, Path, int]:
    from daq.app import LocalStack
    from daq.replay import replay

    cfg = _stack(tmp, "runs", generated_s=0.003, seed=11)
    async with LocalStack(cfg, metrics=False) as stack:
        await stack.take_run(spills=2)
        recorded = stack.recorder.rec.files[-1]
        # a replay run as `na64daq replay --config` asks run control for one
        reply = await stack.start_run(replay=True, run_type="test")
        res = await replay(raw, cfg.endpoints.builder_in, run=int(reply["run"]))
        stop = await stack.stop_run("replay sent")
        assert stop.get("ok") and stop.get("events") == res.events, stop
        return recorded, stack.recorder.rec.files[-1], res.events


def make_run_files(tmp: Path) -> RunFiles:
    raw, truth, wave = tmp / "raw.na64", tmp / "truth.na64", tmp / "wave.na64"
    assert main(["simulate", *SIM, "--out", str(raw), "--truth", str(truth)]) == 0
    assert main(["simulate", *SIM, "--mode", "waveform", "--zero-suppress",
                 "--out", str(wave)]) == 0
    recorded, replayed, events = asyncio.run(_standing_runs(tmp, raw))
    assert replayed.name.startswith("replay-run")
    return RunFiles(raw, truth, wave, recorded, replayed, events,
                    asyncio.run(_waveform_run(tmp)))
