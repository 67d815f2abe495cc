"""A stop signal that reaches a service process after it drained must not kill it.

`up` stops every service in data-flow order; a trigger worker that already saw the end of
its input can be tearing its interpreter down when its SIGTERM arrives. Closing the event
loop restores the default handlers, so without `ignore_stop_signals` the process dies by
the signal (exit -15) and the supervisor reports a crash for a clean end (seen in CI).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, sys
    from daq.service import ignore_stop_signals, on_stop_signals

    async def serve(ignore):
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        on_stop_signals(loop, stopped.set)
        os.kill(os.getpid(), signal.SIGTERM)   # asks the service to stop: drains
        await asyncio.wait_for(stopped.wait(), 10)
        if ignore:
            ignore_stop_signals(loop)

    asyncio.run(serve(sys.argv[1] == "ignore"))
    os.kill(os.getpid(), signal.SIGTERM)       # the late one, after the loop closed
    print("exited cleanly", flush=True)
""")


@pytest.mark.parametrize("mode", ["ignore", "default"])
def test_late_sigterm_after_drain(mode: str) -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                       timeout=60)
    if mode == "ignore":
        assert (r.returncode, r.stdout.strip()) == (0, "exited cleanly"), r.stderr
    else:  # what asyncio does without it: the control case shows the test can fail
        assert r.returncode == -signal.SIGTERM
