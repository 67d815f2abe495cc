"""The service lifecycle table: every transition allowed or refused by name."""

from __future__ import annotations

import pytest

from daq.errors import StateError
from daq.lifecycle import TABLE, Lifecycle, Phase, RunContext, Transition, allowed, next_phase


def test_run_after_run() -> None:
    lc = Lifecycle()
    lc.apply(Transition.CONFIGURE)
    for run in (1, 2, 3):
        lc.apply(Transition.START, RunContext(run))
        assert lc.phase is Phase.RUNNING and lc.run == run
        lc.apply(Transition.PAUSE)
        lc.apply(Transition.RESUME)
        lc.apply(Transition.STOP)
        assert lc.phase is Phase.CONFIGURED and lc.context is None
    assert lc.runs_taken == 3
    lc.apply(Transition.SHUTDOWN)
    assert lc.phase is Phase.TERMINATED and allowed(lc.phase) == []


def test_a_restarted_service_starts_from_booted() -> None:
    lc = Lifecycle()
    lc.apply(Transition.START, RunContext(9, joined=True))
    assert lc.phase is Phase.RUNNING and lc.context is not None and lc.context.joined


@pytest.mark.parametrize(("phase", "t"), [(p, t) for p in Phase for t in Transition
                                          if (p, t) not in TABLE])
def test_every_other_transition_is_refused_naming_phase_and_command(phase: Phase,
                                                                    t: Transition) -> None:
    with pytest.raises(StateError) as e:
        next_phase(phase, t)
    assert e.value.state == phase.value and e.value.command == t.value


def test_a_failure_keeps_the_reason_until_configured_again() -> None:
    lc = Lifecycle()
    lc.apply(Transition.START, RunContext(1))
    lc.apply(Transition.FAIL, error="disk full")
    assert lc.phase is Phase.ERROR and lc.error == "disk full" and lc.context is None
    lc.apply(Transition.CONFIGURE)
    assert lc.phase is Phase.CONFIGURED and lc.error is None


@pytest.mark.parametrize("args", [{"run": -1}, {"run": "7"}, {"run": 1, "max_spills": 0},
                                  {"run": 1, "snapshot": []}])
def test_bad_start_arguments_name_what_is_wrong(args: dict) -> None:
    with pytest.raises(ValueError, match=r"run|max_spills|snapshot"):
        RunContext.from_args(args)


def test_ready_is_online_from_this_process_and_compiled() -> None:
    from daq.lifecycle import not_ready

    docs = {"builder": {"status": "online", "pid": 10},
            "trigger-0": {"status": "online", "pid": 11, "ready": False},
            "recorder": {"status": "offline", "pid": 12}}
    names = ["builder", "trigger-0", "recorder", "monitor"]
    assert not_ready(docs, names) == ["trigger-0", "recorder", "monitor"]
    docs["trigger-0"]["ready"] = True
    docs["recorder"]["status"] = "online"
    docs["monitor"] = {"status": "online", "pid": 13}
    assert not_ready(docs, names) == []
    # a retained document of an earlier process is not this one's
    assert not_ready(docs, names, {"builder": 99, "trigger-0": 11, "recorder": 12,
                                   "monitor": 13}) == ["builder"]


def test_a_run_is_settled_once_run_control_has_closed_that_very_run() -> None:
    from daq.lifecycle import run_settled

    assert not run_settled({})  # nothing heard from run control yet
    assert not run_settled({"state": "running", "run": {"run": 3}}, 3)
    assert not run_settled({"state": "paused", "run": {"run": 3}})
    assert run_settled({"state": "stopped", "run": {"run": 3}, "last_run": 3}, 3)
    assert run_settled({"state": "error", "run": {"run": 3}, "last_run": 3}, 3)
    assert not run_settled({"state": "stopped", "run": {"run": 2}, "last_run": 2}, 3)
    assert run_settled({"state": "idle", "run": None, "last_run": 0})
