"""Run control without a broker: requests through the core onto a DataPath, persisted.

`RunControlService` puts MQTT in front of a `Controller`; the demo drives one directly (no
broker needed). Both take the same steps, so a run started from `na64daq ctl` and one
started by the demo's autopilot go through the same core, table and persistence:

    plan = core.plan(request)  ->  reserve (persist)  ->  effect on the DataPath
           ->  commit or fail  ->  persist
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from daq.control.core import Plan, RunControl, recover
from daq.control.datapath import DataPath
from daq.control.protocol import Request, RunParams
from daq.control.store import StateStore

log = logging.getLogger("na64.control")


class Controller:
    """The run-control core, its persisted state and the data path it acts on."""

    def __init__(self, store: StateStore, datapath: DataPath, *,
                 clock: Callable[[], float] = time.time, adopt: bool = False) -> None:
        """`adopt`: a run open when run control last stopped is kept until `adopt_run`
        has asked the data path whether it is still open (else it is closed as an error
        at once, as `recover` says)."""
        self.store = store
        self.datapath = datapath
        self._clock = clock
        state = store.load()
        self.core = RunControl(state if adopt else recover(state, clock()), clock=clock)
        store.save(self.core.state)
        self.lock = asyncio.Lock()
        self._ids = itertools.count(1)
        #: called with (plan, reply) after every executed request (publishing, audit)
        self.after: list[Callable[[Plan, dict[str, Any]], Any]] = []

    async def execute(self, plan: Plan) -> dict[str, Any]:
        """Carry out a planned request; the caller holds `lock`."""
        self.core.reserve(plan)
        self.store.save(self.core.state)
        eff, result = plan.effect, None
        try:
            if eff is not None:
                if eff.kind == "start":
                    await self.datapath.start_run(eff.run, eff.snapshot)
                elif eff.kind == "stop":
                    result = await self.datapath.stop_run()
                elif eff.kind == "pause":
                    await self.datapath.pause()
                elif eff.kind == "resume":
                    await self.datapath.resume()
                else:
                    await self.datapath.set_trigger_config(eff.config, eff.who)
        except Exception as e:  # the data path is another component: any failure is an error
            log.exception("data path failed on %s", plan.request.verb)
            reply = self.core.fail(plan, f"{type(e).__name__}: {e}")
        else:
            reply = self.core.commit(plan, result)
        self.store.save(self.core.state)
        for fn in self.after:
            r = fn(plan, reply)
            if asyncio.iscoroutine(r):
                await r
        return reply

    async def adopt_run(self, timeout_s: float = 30.0) -> bool | None:
        """Take up a run left open by the previous run control, if the data path is still
        in it; otherwise close it as `recover` does (error, reset needed). None: no run was
        open."""
        st = self.core.state
        if st.state.value not in ("running", "paused") or st.run is None:
            return None
        snap = st.run.snapshot
        params = dict(snap.get("params") or {})
        adopt = getattr(self.datapath, "adopt_run", None)
        ok = False
        if adopt is not None:
            ok = await adopt(st.run.run, replay=bool(params.get("replay")), snapshot=snap,
                             max_spills=params.get("max_spills"), timeout_s=timeout_s)
        if not ok:
            async with self.lock:
                self.core.state = recover(st, self._clock())
                self.store.save(self.core.state)
        return ok

    async def request(self, verb: str, *, user: str = "demo", **args: Any) -> dict[str, Any]:
        """A run command from inside the process (demo, autopilot); ProtocolError if refused."""
        rid = f"{user}-{time.time_ns():x}-{next(self._ids)}"
        if "params" in args:
            args["params"] = RunParams.parse(args["params"]).model_dump(mode="json")
        req = Request("run", verb, rid, user, args)
        async with self.lock:
            plan = self.core.plan(req)
            return await self.execute(plan)

    async def follow_run_ends(self) -> None:
        """Front ends that end a run by themselves (max_spills) get run control's stop."""
        while True:
            run = await self.datapath.run_ended()
            st = self.core.state
            if st.run is None or st.run.run != run or st.state.value not in ("running",
                                                                               "paused"):
                continue
            try:
                await self.request("stop", user="runcontrol",
                                   reason=f"run {run} took its max_spills")
            except Exception:  # refused (state changed meanwhile): nothing to stop
                log.exception("could not stop run %d after its last spill", run)
