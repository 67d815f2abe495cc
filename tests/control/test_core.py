"""The pure run-control core: transition table, protocol parsing, plans, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daq.control import protocol as P
from daq.control.core import Activation, RunControl, recover
from daq.control.state import (
    TRANSITIONS,
    Command,
    ControlState,
    RunState,
    allowed,
    next_state,
)
from daq.control.store import StateStore, StoreError
from daq.errors import StateError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def req(verb: str, rid: str, body: dict | None = None, user: str = "shift1") -> P.Request:
    return P.parse(P.run_topic(verb, user), json.dumps({"id": rid, **(body or {})}).encode())


def treq(body: dict, user: str = "expert1") -> P.Request:
    return P.parse(f"{P.DESIRED}/{user}", json.dumps(body).encode())


def run_cmd(core: RunControl, r: P.Request, result: dict | None = None) -> dict:
    plan = core.plan(r)
    core.reserve(plan)
    return core.commit(plan, result)


# --- the table -----------------------------------------------------------------------

def test_every_state_has_a_way_out() -> None:
    for s in RunState:
        assert allowed(s), s
    assert next_state(RunState.ERROR, Command.RESET) is RunState.IDLE


@pytest.mark.parametrize("state", list(RunState))
@pytest.mark.parametrize("cmd", list(Command))
def test_table_is_the_only_truth(state: RunState, cmd: Command) -> None:
    if (state, cmd) in TRANSITIONS:
        assert next_state(state, cmd) is TRANSITIONS[(state, cmd)]
    else:
        with pytest.raises(StateError) as e:
            next_state(state, cmd)
        assert e.value.state == state.value and e.value.command == cmd.value
        assert state.value in str(e.value) and cmd.value in str(e.value)


# --- protocol ------------------------------------------------------------------------

@pytest.mark.parametrize(("topic", "payload", "code"), [
    (f"{P.RUN_CMD}/start/shift1", b"\xff\xfe", P.MALFORMED),
    (f"{P.RUN_CMD}/start/shift1", b"[1,2]", P.MALFORMED),
    (f"{P.RUN_CMD}/start/shift1", b"{}", P.MALFORMED),
    (f"{P.RUN_CMD}/start/shift1", b'{"id": 7}', P.MALFORMED),
    (f"{P.RUN_CMD}/start/shift1", b'{"id": "a b"}', P.MALFORMED),
    (f"{P.RUN_CMD}/start/shift1", b'{"id": "a", "bogus": 1}', P.MALFORMED),
    (f"{P.RUN_CMD}/stop/shift1", b'{"id": "a", "params": {}}', P.MALFORMED),
    (f"{P.RUN_CMD}/launch/shift1", b'{"id": "a"}', P.UNKNOWN),
    (f"{P.RUN_CMD}/fail/shift1", b'{"id": "a"}', P.UNKNOWN),
    (f"{P.RUN_CMD}/start/shift1", b'{"id": "a", "params": {"beam_energy_gev": 9000}}',
     P.RANGE),
    (f"{P.DESIRED}/expert1", b'{"id": "a"}', P.MALFORMED),
    (f"{P.DESIRED}/expert1", b'{"id": "a", "set": ["x"]}', P.MALFORMED),
    (f"{P.DESIRED}/expert1", b'{"id": "a", "set": [], "config": {}}', P.MALFORMED),
    ("na64/other", b'{"id": "a"}', P.UNKNOWN),
    (f"{P.RUN_CMD}/start/shift1", b"{" * 70000, P.MALFORMED),
    # issue 20: 10 kB from the lowest-privilege account once ended run control
    (f"{P.RUN_CMD}/start/shift1", b"[" * 5000 + b"]" * 5000, P.MALFORMED),
    (f"{P.DESIRED}/expert1", b'{"id": "a", "config": ' + b'{"a":' * 40 + b"1" + b"}" * 41,
     P.MALFORMED),
])
def test_malformed_requests_are_refused_with_a_code(topic: str, payload: bytes,
                                                    code: str) -> None:
    with pytest.raises(P.ProtocolError) as e:
        P.parse(topic, payload)
    assert e.value.code == code
    assert e.value.reason


def test_user_comes_from_the_topic_not_the_payload() -> None:
    r = P.parse(P.run_topic("start", "shift1"), b'{"id": "x1", "params": {"comment": "hi"}}')
    assert (r.kind, r.verb, r.user, r.args["params"]["comment"]) == ("run", "start", "shift1",
                                                                     "hi")


# --- core ----------------------------------------------------------------------------

def test_full_cycle_and_duplicates() -> None:
    core = RunControl(ControlState(), clock=Clock())
    r = run_cmd(core, req("start", "c1"))
    assert r == {"id": "c1", "ok": True, "state": "running", "run": 1}
    assert core.state.run is not None and core.state.run.snapshot["cfg"]
    # the same id again: same reply, nothing re-applied (run number unchanged)
    assert run_cmd(core, req("start", "c1")) == r
    assert core.state.last_run == 1
    assert run_cmd(core, req("pause", "c2"))["state"] == "paused"
    assert run_cmd(core, req("resume", "c3"))["state"] == "running"
    stop = run_cmd(core, req("stop", "c4"), {"events": 10, "spills": 2})
    assert (stop["state"], stop["events"], stop["spills"]) == ("stopped", 10, 2)
    assert run_cmd(core, req("start", "c5"))["run"] == 2


def test_refusal_changes_nothing() -> None:
    core = RunControl(ControlState(), clock=Clock())
    before = json.dumps(core.state.to_json(), sort_keys=True)
    with pytest.raises(P.ProtocolError) as e:
        core.plan(req("stop", "x"))
    assert e.value.code == P.STATE and "idle" in e.value.reason and "start" in e.value.reason
    with pytest.raises(P.ProtocolError) as e:
        core.plan(treq({"id": "t", "set": ["ecal_max_gev=-5"]}))
    assert e.value.code == P.RANGE and "ecal_max_gev" in e.value.reason
    assert json.dumps(core.state.to_json(), sort_keys=True) == before


def test_trigger_change_is_pending_until_activated() -> None:
    core = RunControl(ControlState(), clock=Clock())
    plan = core.plan(treq({"id": "t1", "set": ["ecal_max_gev=85"]}))
    assert plan.effect is not None and plan.effect.config["ecal_max_gev"] == 85.0
    reply = core.commit(plan)
    assert reply["pending"] and reply["version"] == 2
    assert core.state.trigger_active is None
    active = core.activated(Activation(plan.effect.config, "expert1", 5.0, 3, 7))
    assert (active["spill"], active["run"], active["who"], active["id"]) == (7, 3, "expert1", "t1")
    assert core.state.trigger_desired is None
    # the next change starts from what is active
    nxt = core.plan(treq({"id": "t2", "set": ["ps_min_gev=0.5"]}))
    assert nxt.effect is not None and nxt.effect.config["ecal_max_gev"] == 85.0


def test_failure_goes_to_error_and_reset_leaves_it() -> None:
    core = RunControl(ControlState(), clock=Clock())
    plan = core.plan(req("start", "a"))
    core.reserve(plan)
    r = core.fail(plan, "builder unreachable")
    assert (r["ok"], r["error"], r["state"]) == (False, P.FAILED, "error")
    assert "builder unreachable" in (core.state.error or "")
    assert run_cmd(core, req("reset", "b"))["state"] == "idle"
    assert run_cmd(core, req("start", "c"))["run"] == 2  # run 1 was burned, never reused


# --- persistence ---------------------------------------------------------------------

def test_store_roundtrip_and_recovery(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    core = RunControl(store.load(), clock=Clock())
    run_cmd(core, req("start", "a"))
    store.save(core.state)
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = StateStore(tmp_path).load()
    assert loaded.state is RunState.RUNNING and loaded.last_run == 1 \
        and any(k.endswith("/start/a") for k in loaded.replies)
    back = recover(loaded, 99.0)
    assert back.state is RunState.ERROR and back.run is not None
    assert back.run.stopped_at == 99.0 and "restarted" in (back.run.stop_reason or "")
    assert store.load_run(1).snapshot["run"] == 1


def test_corrupt_state_is_refused_not_reset(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StoreError) as e:
        StateStore(tmp_path).load()
    assert "corrupt" in str(e.value)


def test_audit_log_skips_a_torn_tail(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.append_audit({"n": 1})
    store.append_audit({"n": 2})
    with open(store.audit_path, "a") as f:
        f.write('{"n": 3')
    assert [e["n"] for e in store.read_audit()] == [1, 2]
    assert [e["n"] for e in store.read_audit(last=1)] == [2]


@pytest.mark.parametrize(("raw", "depth"), [
    (b"{}", 1), (b'{"a": [1, {"b": 2}]}', 3), (b'{"a": "[[[[{{{"}', 1),
    (b'{"a": "\\"[[["}', 1), (b"[" * 5000, 5000),
])
def test_nesting_is_measured_without_parsing(raw: bytes, depth: int) -> None:
    assert P._nesting(raw) == depth
