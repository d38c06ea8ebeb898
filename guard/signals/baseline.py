"""Baselines (guard.yaml `baseline: {learn_s: N}`): what an agent usually does, so a call unlike it
stands out.

Every call an agent makes is counted in the store (shared by every instance, kept across restarts
on Redis): the tool.actions it used and its calls per clock hour. Once `learn_s` has passed since
its first call, a call is unusual when

- it goes to a tool.action the agent never used (`new_action`), or
- it takes the current hour above 3 x the agent's busiest earlier hour (`rate`).

An unusual call matches `match.agent: {unusual: true}` (so a rule can deny it or step it up), is
audited `anomaly` in its task's trail and counted in /metrics (`guard_anomalies_total{reason}`).
With no `baseline` configured, nothing here runs on a call.
"""

from __future__ import annotations

import time

from prometheus_client import Counter

from guard.audit.log import AuditLog
from guard.domain import Action, Caller
from guard.log import get_logger
from guard.metrics import Metrics
from guard.stores.base import Store

__all__ = ["RATE_FACTOR", "Baselines"]

log = get_logger("guard.baseline")
RATE_FACTOR = 3


class Baselines:
    def __init__(self, learn_s: float, store: Store, audit: AuditLog, metrics: Metrics) -> None:
        self.learn_s, self.store, self.audit = learn_s, store, audit
        self.anomalies = Counter("guard_anomalies", "Calls unlike their agent's baseline, by reason", ["reason"],
                                 registry=metrics.registry)

    async def observe(self, caller: Caller, action: Action, call_id: str) -> bool:
        """Count the call; True (and audited) when it is unusual for its agent."""
        now = time.time()
        key = f"{action.tool}.{action.name}"
        seen = await self.store.observe_activity(caller.agent, key, now)
        if now - seen.first_at < self.learn_s:
            return False  # still learning
        if not seen.known:
            reason = "new_action"
        elif seen.busiest > 0 and seen.hour_calls > RATE_FACTOR * seen.busiest:
            reason = "rate"
        else:
            return False
        self.anomalies.labels(reason).inc()
        log.warning("anomaly", agent=caller.agent, tool=action.tool,
                    action=action.name, reason=reason)
        await self.audit.append(caller.task_id, "anomaly", caller.agent, call_id=call_id, tool=action.tool,
                                action=action.name, detail={"reason": reason, "hour_calls": seen.hour_calls,
                                                            "busiest_hour": seen.busiest})
        return True
