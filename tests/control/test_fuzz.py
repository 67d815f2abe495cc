"""Fuzz the control plane's inputs (issue 20): nothing raises but the one refusal path.

Run control's MQTT requests (topic + payload through parse, plan and commit), the command
channel's parser (daq.agent.loads), the conductor's `_take` and the agent's `_command`,
with deep nesting, huge numbers, wrong types and invalid UTF-8. The million-input run is
scripts/fuzz_control.py (docs/reliability.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daq.control.core import Activation, RunControl
from daq.control.state import ControlState
from tests.control.fuzz_targets import (
    TOPICS,
    AsyncTargets,
    LoadsTarget,
    RunControlTarget,
    check,
)

_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**20)
            | st.floats() | st.text(max_size=40) | st.sampled_from(
                ["start", "activated", "hello", "status", "reply", "event", "a=1",
                 "ecal_max_gev=85", "run_closed", "run_ended"]))
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.sampled_from(
                         ["id", "params", "reason", "set", "config", "comment", "t", "cmd",
                          "args", "run", "event", "replay", "snapshot", "max_spills"]),
                         kids, max_size=5), max_leaves=20)


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode("utf-8", "surrogatepass")


_deep = st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n)
_huge = st.integers(min_value=4000, max_value=20_000).map(
    lambda n: b'{"id":"a","n":' + b"9" * n + b"}")
_payloads = (_json.map(_encode)
             | st.dictionaries(st.sampled_from(["id", "params", "set", "config", "t",
                                                "event", "cmd", "args"]),
                               _json, max_size=5).map(_encode)
             | _deep | _huge | st.binary(max_size=200))
_inputs = st.tuples(st.integers(0, 255), _payloads).map(lambda t: bytes([t[0]]) + t[1])

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(_inputs)
def test_runcontrol_requests(data: bytes) -> None:
    t = RunControlTarget()
    check(t, t.allowed, data)


@FUZZ
@given(_payloads)
def test_agent_loads(data: bytes) -> None:
    check(LoadsTarget(), (ValueError,), data)


@pytest.fixture(scope="module")
def targets() -> Iterator[AsyncTargets]:
    t = AsyncTargets()
    yield t
    t.close()


@FUZZ
@given(data=_inputs)
def test_agent_command(targets: AsyncTargets, data: bytes) -> None:
    check(targets.command, (), data)


@FUZZ
@given(data=_inputs)
def test_conductor_take(targets: AsyncTargets, data: bytes) -> None:
    check(targets.take, (), data)
    check(targets.take, (), b"\x00" + _encode({"t": "event", "event": "activated",
                                               "config": -4}))


def test_topics_cover_every_verb() -> None:
    assert sum(t.startswith("na64/run/cmd/") and t.endswith("/shift") for t in TOPICS) >= 6


@pytest.mark.parametrize("config", [{"ecal_max_gev": "x"}, {"nonsense": 1}])
def test_an_invalid_activation_is_refused_by_the_core(config: dict[str, Any]) -> None:
    from daq.errors import DaqError

    core = RunControl(ControlState(), clock=lambda: 1.0)
    with pytest.raises(DaqError):
        core.activated(Activation(config, "builder", 1.0, None, None))


def test_a_huge_integer_is_refused_with_a_reply() -> None:
    """It used to escape parse as a bare ValueError: a failure with no reply."""
    from daq.control import protocol as P

    with pytest.raises(P.ProtocolError) as e:
        P.parse(P.run_topic("start", "shift"), b'{"id":"a","n":' + b"9" * 5000 + b"}")
    assert e.value.code == P.MALFORMED
