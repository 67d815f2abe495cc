"""The leaked-task guard of tests/conftest.py fails an async test that leaves tasks running."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

LEAKS = """
import asyncio
import pytest

@pytest.mark.asyncio
async def test_leaks():
    asyncio.create_task(asyncio.sleep(30), name="forgotten-sleeper")
"""

CLEANS_UP = """
import asyncio
import contextlib
import pytest
import pytest_asyncio

@pytest_asyncio.fixture
async def service():
    task = asyncio.create_task(asyncio.sleep(30), name="fixture-owned")
    yield task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

@pytest.mark.asyncio
async def test_cleans_up(service):
    task = asyncio.create_task(asyncio.sleep(30), name="own-sleeper")
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not service.done()  # the fixture's task runs through the test: not a leak

def test_sync():
    pass
"""


@pytest.fixture
def guarded(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with this suite's conftest.py (and so its guard)."""
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST.read_text())
    return pytester


def test_a_leaked_task_fails_the_test_and_is_named(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_inner=LEAKS)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks*",
        "*test left 1 asyncio task(s) running: forgotten-sleeper (sleep)*",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_tasks_stopped_by_the_test_or_its_fixtures_pass(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_inner=CLEANS_UP)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
