"""Forward an authorized call and finish it: the upstream answer is audited before it goes out,
then the call's Txn-Token stops working (in the same store operation when the answer is whole)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from guard.audit.log import AuditLog
from guard.domain import Authorized
from guard.errors import GuardError, StoreUnavailable
from guard.log import get_logger
from guard.stages.forward import Client, Cut, Rewrite, forward
from guard.stores.base import CallStore
from guard.tasks.ends import EndReason, TaskEnds, TaskWatch
from guard.upstreams import Upstreams

__all__ = ["finish_quietly", "forward_and_finish"]

log = get_logger("guard.tools")


async def forward_and_finish(
    client: Client,
    auth: Authorized,
    tools: Upstreams,
    audit: AuditLog,
    store: CallStore,
    tls: Callable[[Authorized], ssl.SSLContext | None],
    task_ends: TaskEnds,
    event: str = "call_forwarded",
    rewrite: Rewrite | None = None,
    farewell: Callable[[EndReason], bytes] | None = None,
) -> web.StreamResponse:
    """Forward, audit the upstream answer (as `event`) before it goes out, then end the call's
    Txn-Token. `rewrite` may transform the answer (MCP tools/list); `tls` gives the TLS the tool
    asks for (a failure to make it is audited as the call's failure). When the task ends meanwhile
    the call is cut (guard.stages.forward.Cut, with `farewell` for an SSE answer) and the cut
    audited as `stream_closed`."""
    task_id, call_id, agent = auth.caller.task_id, auth.call.call_id, auth.caller.agent
    base: dict[str, Any] = {"tool": auth.action.tool, "action": auth.action.name,
                            "chain": list(auth.caller.chain), "parent_call_id": auth.caller.parent_call_id}
    if auth.minted.audit is not None:  # {mode, source, version | token_id | lease}: never the secret
        base["credential"] = auth.minted.audit
    finished = False
    trace = auth.call.trace
    if trace is not None:  # the forward span starts; the tool receives its traceparent
        auth.minted.headers.update(trace.forwarding())

    async def on_headers(status: int, latency_s: float, complete: bool) -> None:
        nonlocal finished
        if trace is not None:
            trace.answered(status)
        latency_ms = round(latency_s * 1000, 3)
        if complete:  # the tool has answered whole: the record and the call's end in one operation
            await audit.append_and_finish(task_id, call_id, event, agent, status=status,
                                          latency_ms=latency_ms, **base)
            finished = True
        else:
            await audit.append(task_id, event, agent, call_id=call_id, status=status,
                               latency_ms=latency_ms, **base)
        log.debug("upstream_forwarded", status=status)

    async def on_cut(reason: EndReason) -> None:
        await audit.append(task_id, "stream_closed", agent, call_id=call_id, detail=reason, **base)
        log.info("stream_closed", reason=reason)

    def watch() -> TaskWatch:
        return task_ends.watch(task_id, agent)

    try:
        return await forward(client, auth, tools, on_headers, rewrite, tls(auth), cut=Cut(watch, on_cut, farewell))
    except GuardError as err:
        if err.code in ("upstream_unavailable", "upstream_timeout") and not finished:
            await audit.append_and_finish(task_id, call_id, "call_failed", agent, status=err.status,
                                          detail=err.code, **base, reason=err.detail)
            finished = True
        raise
    finally:
        if not finished:
            await finish_quietly(store, task_id, call_id)


async def finish_quietly(store: CallStore, task_id: str, call_id: str) -> None:
    """End a call in flight (its Txn-Token stops working); a store failure is only logged."""
    try:
        await store.finish_call(task_id, call_id)
    except StoreUnavailable:
        log.warning("call_finish_failed", task_id=task_id, call_id=call_id)
