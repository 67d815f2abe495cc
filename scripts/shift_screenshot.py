#!/usr/bin/env python3
"""Screenshot of the shift page against a running demo (docs/img/shift-page.png).

    python scripts/shift_screenshot.py [--out docs/img/shift-page.png] [--spills 8]

Runs the standing system in one process (daq.app.LocalStack, as `na64daq demo` does) with
its shift page on a free port, takes a run of --spills spills at 8x SPS speed, and has
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; `./scripts/test`
installs both) load the page and photograph it once the run's last spill is drawn.
Nothing leaves the machine: the page, its JavaScript and its data come from 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from daq.app import LocalStack
from daq.stack import StackConfig

CHROMIUM = os.environ.get("NA64_CHROMIUM", "/usr/bin/chromium")


def config(run_dir: Path, spills: int, *, factor: float = 8.0, intensity: float = 6e6,
           generated_s: float = 0.05, tag: str = "shot") -> StackConfig:
    """A demo topology on in-process transports, every port free, the page included."""
    ports = dict.fromkeys(("frontend", "builder", "recorder", "monitor", "control",
                           "trigger", "web"), 0)
    return StackConfig.parse({
        "run_dir": str(run_dir), "workers": 2, "metrics": ports,
        "simulator": {"spills": spills, "pace": "factor", "factor": factor,
                      "sim": {"intensity": intensity, "generated_s": generated_s,
                              "seed": 5}},
    }).inproc(tag)


async def shoot(out: Path, spills: int, width: int, height: int) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        async with LocalStack(config(Path(tmp), spills)) as stack:
            url = stack.monitor.web.url
            await stack.take_run(spills=spills)
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = await browser.new_page(viewport={"width": width, "height": height})
                await page.goto(url)
                await page.wait_for_function(
                    f"Number(document.body.dataset.spills) >= {spills}", timeout=30_000)
                await page.wait_for_timeout(500)
                out.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(out), full_page=True)
                await browser.close()
    print(f"wrote {out} (page {url}, {spills} spills)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/shift-page.png"))
    ap.add_argument("--spills", type=int, default=8)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    a = ap.parse_args()
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        print(f"error: no Chromium at {CHROMIUM} (apt-get install chromium)")
        return 2
    asyncio.run(shoot(a.out, a.spills, a.width, a.height))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
