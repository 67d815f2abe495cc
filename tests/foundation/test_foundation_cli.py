"""The na64daq command: --version and --help work as an installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

from daq import __version__
from daq.cli import main


def test_version_and_help_in_process(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "usage: na64daq" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    exe = shutil.which("na64daq")
    cmd = [exe] if exe else [sys.executable, "-m", "daq.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "na64daq" in out.stdout
