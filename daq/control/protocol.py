"""The MQTT control protocol, sans I/O: topics, command parsing and validation, replies.

Topics (docs/control.md is the reference for operators):

    na64/run/cmd/<verb>/<user>      run command, QoS 1, never retained   (shift, expert)
    na64/trigger/desired/<user>     trigger change request, QoS 1        (expert only)
    na64/reply/<user>/<client>      replies, via MQTT v5 response topic   (read: that user)
    na64/run/state                  retained run state                    (service)
    na64/status/<service>           retained "online"/"offline" (will)    (service)
    na64/services/<name>            retained status document of every     (run control)
                                    data-path service (phase, run, pid)
    na64/trigger/desired            retained: the last accepted request   (service)
    na64/trigger/active             retained: what the data path applies  (service)
    na64/trigger/history            retained: the last audit entries      (service)
    na64/trigger/audit              one message per audit entry           (service)

The last topic level of a request is the authenticated user: the broker's ACL only lets
user `u` write `.../u`, so the service can trust it as "who" without trusting the payload.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from daq.config import StrictModel
from daq.control.state import PUBLIC_COMMANDS, Command
from daq.errors import ConfigError, DaqError

PREFIX = "na64"
RUN_CMD = f"{PREFIX}/run/cmd"
RUN_CMD_SUB = f"{RUN_CMD}/+/+"
DESIRED = f"{PREFIX}/trigger/desired"
DESIRED_SUB = f"{DESIRED}/+"
ACTIVE = f"{PREFIX}/trigger/active"
HISTORY = f"{PREFIX}/trigger/history"
AUDIT = f"{PREFIX}/trigger/audit"
RUN_STATE = f"{PREFIX}/run/state"
STATUS = f"{PREFIX}/status"
SERVICES = f"{PREFIX}/services"
REPLY = f"{PREFIX}/reply"

MAX_PAYLOAD = 64 * 1024
MAX_DEPTH = 32  # the deepest request is 3 levels; a trigger configuration a few more
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# error codes carried in replies (and used as a bounded metrics label)
MALFORMED = "malformed"
UNKNOWN = "unknown"
STATE = "state"
RANGE = "range"
FAILED = "failed"
ERROR_CODES = (MALFORMED, UNKNOWN, STATE, RANGE, FAILED)


class ProtocolError(DaqError):
    """A request was refused before it changed anything: `code` is one of ERROR_CODES."""

    def __init__(self, code: str, reason: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.request_id = request_id


class RunParams(StrictModel):
    """Parameters a run is configured with; stored in the run's snapshot."""

    run_type: Literal["physics", "calibration", "test"] = Field(
        default="physics", description="What the run is for.")
    beam_energy_gev: float = Field(default=100.0, gt=0.0, le=450.0,
                                   description="Nominal beam energy, GeV (SPS: at most 450).")
    comment: str = Field(default="", max_length=500, description="Free text for the logbook.")
    replay: bool = Field(default=False, description=(
        "A replay run (test mode): its data come from a run file sent by `na64daq replay`, "
        "not from the front ends; recorded as replay-runNNNNNN.na64, source=\"replay\"."))
    max_spills: int | None = Field(default=None, ge=1, le=10_000_000, description=(
        "End the run by itself after this many spills (unattended runs, benchmarks); "
        "None: until stopped."))


@dataclass(frozen=True)
class Request:
    """A parsed request: a run command (verb is a Command) or a trigger change (verb "set")."""

    kind: Literal["run", "trigger"]
    verb: str
    id: str
    user: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> Command:
        return Command(self.verb)


def user_topic(base: str, user: str) -> str:
    if not _NAME.match(user):
        raise ProtocolError(MALFORMED, f"user name {user!r} is not [A-Za-z0-9_.-]{{1,64}}")
    return f"{base}/{user}"


def run_topic(verb: str, user: str) -> str:
    return user_topic(f"{RUN_CMD}/{verb}", user)


def reply_topic(user: str, client_id: str) -> str:
    return f"{user_topic(REPLY, user)}/{client_id}"


def _payload(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_PAYLOAD:
        raise ProtocolError(MALFORMED, f"payload is {len(raw)} bytes, limit {MAX_PAYLOAD}")
    depth = _nesting(raw)
    if depth > MAX_DEPTH:  # before parsing: the parser recurses once per level
        raise ProtocolError(MALFORMED, f"payload nests {depth} levels deep, limit {MAX_DEPTH}")
    try:
        body = json.loads(raw)
    # ValueError also covers an integer of more than 4300 digits (int_max_str_digits),
    # which escaped as a failure with no reply (found by scripts/fuzz_control.py)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(MALFORMED, f"payload is not JSON ({e.__class__.__name__})") from None
    if not isinstance(body, dict):
        raise ProtocolError(MALFORMED, f"payload is a JSON {type(body).__name__}, not an object")
    return body


def _nesting(raw: bytes) -> int:
    """The deepest nesting of JSON arrays and objects in `raw`, brackets inside strings
    not counted; a linear scan that cannot recurse (issue 20: 5000 '[' from the shift
    account once ended run control with RecursionError)."""
    depth = deepest = 0
    in_str = escaped = False
    for c in raw:
        if in_str:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _request_id(body: dict[str, Any]) -> str:
    rid = body.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise ProtocolError(MALFORMED,
                            f"'id' is {rid!r}, expected a string [A-Za-z0-9_.:-]{{1,64}}")
    return rid


def parse(topic: str, payload: bytes) -> Request:
    """Parse and validate the form of a request; raises ProtocolError (code, reason).

    Values that depend on the current state (is the command allowed now, does the trigger
    change validate against the active configuration) are checked by the core.
    """
    parts = topic.split("/")
    if len(parts) == 5 and topic.startswith(RUN_CMD + "/"):
        verb, user = parts[3], parts[4]
        kind: Literal["run", "trigger"] = "run"
    elif len(parts) == 4 and topic.startswith(DESIRED + "/"):
        verb, user = "set", parts[3]
        kind = "trigger"
    else:
        raise ProtocolError(UNKNOWN, f"topic {topic!r} is not a command topic")
    if not _NAME.match(user):
        raise ProtocolError(MALFORMED, f"user {user!r} in topic is not a valid name")
    body = _payload(payload)
    rid = _request_id(body)
    if kind == "run":
        return _run_request(verb, user, rid, body)
    return _trigger_request(user, rid, body)


def _run_request(verb: str, user: str, rid: str, body: dict[str, Any]) -> Request:
    if verb not in {c.value for c in PUBLIC_COMMANDS}:
        known = sorted(c.value for c in PUBLIC_COMMANDS)
        raise ProtocolError(UNKNOWN, f"unknown command {verb!r}; known: {known}", rid)
    extra = set(body) - {"id", "params", "reason"}
    if extra:
        raise ProtocolError(MALFORMED, f"unknown fields {sorted(extra)} in {verb!r}", rid)
    args: dict[str, Any] = {}
    if "params" in body:
        if verb not in (Command.CONFIGURE, Command.START):
            raise ProtocolError(MALFORMED, f"{verb!r} takes no 'params'", rid)
        try:
            args["params"] = RunParams.parse(body["params"]).model_dump(mode="json")
        except ConfigError as e:
            raise ProtocolError(RANGE, str(e), rid) from None
    if "reason" in body:
        reason = body["reason"]
        if not isinstance(reason, str) or len(reason) > 500:
            raise ProtocolError(MALFORMED, "'reason' must be a string of at most 500", rid)
        args["reason"] = reason
    return Request("run", verb, rid, user, args)


def _trigger_request(user: str, rid: str, body: dict[str, Any]) -> Request:
    extra = set(body) - {"id", "set", "config", "comment"}
    if extra:
        raise ProtocolError(MALFORMED, f"unknown fields {sorted(extra)} in trigger request", rid)
    has_set, has_cfg = "set" in body, "config" in body
    if has_set == has_cfg:
        raise ProtocolError(MALFORMED, "give exactly one of 'set' (KEY=VALUE list) or "
                            "'config' (a full configuration)", rid)
    args: dict[str, Any] = {"comment": body.get("comment", "")}
    if not isinstance(args["comment"], str) or len(args["comment"]) > 500:
        raise ProtocolError(MALFORMED, "'comment' must be a string of at most 500", rid)
    if has_set:
        items = body["set"]
        if (not isinstance(items, list) or not items or len(items) > 64
                or not all(isinstance(i, str) and "=" in i for i in items)):
            raise ProtocolError(MALFORMED, "'set' must be a non-empty list of 'KEY=VALUE' strings",
                                rid)
        args["set"] = items
    else:
        if not isinstance(body["config"], dict):
            raise ProtocolError(MALFORMED, "'config' must be a JSON object", rid)
        args["config"] = body["config"]
    return Request("trigger", "set", rid, user, args)


def ok_reply(rid: str, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "ok": True, **fields}


def error_reply(rid: str | None, code: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": code, "reason": reason, **fields}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
