"""The run-control core, sans I/O: requests in, plans and replies out, state kept as data.

A request is handled in two steps so that a refusal changes nothing and a data-path
failure is visible:

    plan = core.plan(request)        # validates; raises ProtocolError; mutates nothing
    core.reserve(plan)               # start only: burn the run number (persist before acting)
    result = <shell runs plan.effect on the DataPath>
    reply = core.commit(plan, result)   # or core.fail(plan, reason) if the effect raised

The shell persists `core.state` after reserve, commit and fail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from daq.control.protocol import FAILED, RANGE, STATE, ProtocolError, Request, RunParams
from daq.control.state import (
    RUN_OPEN,
    Command,
    ControlState,
    RunRecord,
    RunState,
    allowed,
    next_state,
)
from daq.errors import ConfigError, StateError
from trigger.config import TriggerConfig, apply_overrides

MAX_REMEMBERED_IDS = 256

EffectKind = Literal["start", "stop", "pause", "resume", "trigger"]

_EFFECTS: dict[Command, EffectKind] = {
    Command.START: "start", Command.STOP: "stop", Command.PAUSE: "pause",
    Command.RESUME: "resume",
}


@dataclass(frozen=True)
class Effect:
    """What the data path must do for a plan."""

    kind: EffectKind
    run: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    who: str = ""


@dataclass(frozen=True)
class Plan:
    request: Request
    new_state: RunState
    effect: Effect | None = None
    duplicate_reply: dict[str, Any] | None = None


@dataclass(frozen=True)
class Activation:
    """The data path reports that a trigger configuration became active."""

    config: dict[str, Any]
    who: str
    when: float
    run: int | None
    spill: int | None


def reply_key(req: Request) -> str:
    """Under which key a request's reply is remembered: its id alone would let another user
    (or the same user's other verb) reusing the id get the first reply (issue 20). None of
    the three parts can hold a '/' (protocol._NAME, _ID, the verbs)."""
    return f"{req.user}/{req.verb}/{req.id}"


def recover(state: ControlState, now: float) -> ControlState:
    """Bring a state loaded after a restart to a safe one.

    A run that was open when the service died is closed (its data path is gone with it)
    and the service comes back in `error`, so nobody believes data are being taken; the
    run number is kept, `reset` then `start` opens the next one.
    """
    if state.state in RUN_OPEN and state.run is not None:
        state.run.stopped_at = now
        state.run.stop_reason = "run control restarted while the run was open"
        state.error = f"restarted while run {state.run.run} was {state.state.value}"
        state.state = RunState.ERROR
    return state


class RunControl:
    """Applies requests to a ControlState by the transition table."""

    def __init__(self, state: ControlState, *, clock: Callable[[], float]) -> None:
        self.state = state
        self._clock = clock

    # --- planning: pure validation ---------------------------------------------------

    def plan(self, req: Request) -> Plan:
        """Validate `req` against the current state; raises ProtocolError, changes nothing."""
        known = self.state.replies.get(reply_key(req))
        if known is not None:
            return Plan(req, self.state.state, duplicate_reply=known)
        if req.kind == "trigger":
            return self._plan_trigger(req)
        cmd = req.command
        if cmd is Command.START and (req.args.get("params") or {}).get("replay") \
                and self.state.state in RUN_OPEN and self.state.run is not None:
            raise ProtocolError(STATE, f"a replay is a run of its own and never mixed into a "
                                f"live one: run {self.state.run.run} is "
                                f"{self.state.state.value}; stop it first", req.id)
        try:
            new = next_state(self.state.state, cmd)
        except StateError as e:
            raise ProtocolError(
                STATE, f"{e}; allowed now: {allowed(self.state.state)}", req.id) from None
        kind = _EFFECTS.get(cmd)
        if kind is None:
            return Plan(req, new)
        if kind == "start":
            run = self.state.last_run + 1
            return Plan(req, new, Effect("start", run=run, snapshot=self._snapshot(req, run),
                                         who=req.user))
        return Plan(req, new, Effect(kind, run=self.state.run.run if self.state.run else 0,
                                     who=req.user))

    def _snapshot(self, req: Request, run: int) -> dict[str, Any]:
        # what `configure` set stays for the next runs, but not max_spills: a run that
        # ended by itself (autopilot) must not make the next `start` end by itself too
        sticky = {k: v for k, v in (self.state.run_params or {}).items()
                  if k not in ("max_spills", "replay")}
        params = req.args.get("params") or sticky or RunParams().model_dump(mode="json")
        trig = self.current_trigger()
        return {"run": run, "params": params, "trigger_config": trig.model_dump(mode="json"),
                "cfg": trig.content_hash(), "started_by": req.user, "when": self._clock()}

    def current_trigger(self) -> TriggerConfig:
        """The newest accepted trigger configuration (pending or active), else the default."""
        for rec in (self.state.trigger_desired, self.state.trigger_active):
            if rec is not None:
                return TriggerConfig.parse(rec["config"])
        return TriggerConfig()

    def _plan_trigger(self, req: Request) -> Plan:
        try:
            if "set" in req.args:
                cfg = apply_overrides(self.current_trigger(), req.args["set"], bump_version=True)
            else:
                cfg = TriggerConfig.parse(req.args["config"])
        except ConfigError as e:
            raise ProtocolError(RANGE, str(e), req.id) from None
        return Plan(req, self.state.state,
                    Effect("trigger", config=cfg.model_dump(mode="json"), who=req.user))

    # --- applying ------------------------------------------------------------------

    def reserve(self, plan: Plan) -> None:
        """Burn the run number of a start before the data path opens the run."""
        if plan.effect is not None and plan.effect.kind == "start":
            self.state.last_run = plan.effect.run

    def commit(self, plan: Plan, result: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record a plan whose effect succeeded; returns the reply (remembered by id)."""
        if plan.duplicate_reply is not None:
            return plan.duplicate_reply
        req, now, st = plan.request, self._clock(), self.state
        extra: dict[str, Any] = {}
        if req.kind == "trigger":
            assert plan.effect is not None
            cfg = TriggerConfig.parse(plan.effect.config)
            st.trigger_desired = {"config": plan.effect.config, "cfg": cfg.content_hash(),
                                  "version": cfg.version, "who": req.user, "when": now,
                                  "id": req.id, "comment": req.args.get("comment", "")}
            extra = {"cfg": cfg.content_hash(), "version": cfg.version, "pending": True}
        elif req.command is Command.CONFIGURE:
            st.run_params = req.args.get("params") or RunParams().model_dump(mode="json")
        elif req.command is Command.START:
            assert plan.effect is not None
            st.run_params = plan.effect.snapshot["params"]
            st.run = RunRecord(plan.effect.run, plan.effect.snapshot, req.user, now)
        elif req.command is Command.STOP and st.run is not None:
            st.run.stopped_at = now
            st.run.stop_reason = req.args.get("reason", "stopped by " + req.user)
            st.run.events = int((result or {}).get("events", 0))
            st.run.spills = int((result or {}).get("spills", 0))
            extra = {"events": st.run.events, "spills": st.run.spills}
        elif req.command is Command.RESET:
            st.error = None
        st.state = plan.new_state
        reply = {"id": req.id, "ok": True, "state": st.state.value,
                 "run": st.run.run if st.run else None, **extra}
        self._remember(reply_key(req), reply)
        return reply

    def fail(self, plan: Plan, reason: str) -> dict[str, Any]:
        """The data path raised while carrying out `plan`: go to error and say why."""
        st = self.state
        st.state = next_state(st.state, Command.FAIL)
        st.error = f"{plan.request.verb} failed: {reason}"
        if st.run is not None and st.run.stopped_at is None and plan.effect is not None \
                and plan.effect.kind in ("start", "stop"):
            st.run.stopped_at = self._clock()
            st.run.stop_reason = st.error
        return {"id": plan.request.id, "ok": False, "error": FAILED, "reason": st.error,
                "state": st.state.value}

    def activated(self, act: Activation) -> dict[str, Any]:
        """Record that a configuration became active; returns the `active` record."""
        cfg = TriggerConfig.parse(act.config)
        desired = self.state.trigger_desired or {}
        active = {"config": act.config, "cfg": cfg.content_hash(), "version": cfg.version,
                  "who": act.who, "when": act.when, "run": act.run, "spill": act.spill,
                  "id": desired.get("id") if desired.get("cfg") == cfg.content_hash() else None}
        self.state.trigger_active = active
        if desired.get("cfg") == active["cfg"]:
            self.state.trigger_desired = None
        return active

    def status(self) -> dict[str, Any]:
        """The retained run-state document."""
        st = self.state
        return {"state": st.state.value, "run": st.run.to_json() if st.run else None,
                "last_run": st.last_run, "error": st.error, "allowed": allowed(st.state),
                "params": st.run_params, "when": self._clock()}

    def _remember(self, key: str, reply: dict[str, Any]) -> None:
        self.state.replies[key] = reply
        while len(self.state.replies) > MAX_REMEMBERED_IDS:
            del self.state.replies[next(iter(self.state.replies))]
