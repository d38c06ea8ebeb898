"""`ANY /tools/{tool}/{path}`: an http tool call through the pipeline."""

from __future__ import annotations

import re
from collections.abc import Callable

import structlog
from aiohttp import web

from guard.auth import bearer
from guard.calls import Authorized, ToolCall
from guard.errors import BadRequest, GuardError
from guard.lifecycle import EndReason, TaskWatch
from guard.pipeline import Deps, authorize_call
from guard.routes.common import DEPS, read_body
from guard.stages.forward import Cut, Rewrite, forward
from guard.stages.match import check_tool_path
from guard.stages.task import finish_quietly
from guard.tokens import new_id

__all__ = ["parse_prefer_wait", "routes", "run_forward"]

routes = web.RouteTableDef()
log = structlog.get_logger("guard.tools")
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


def parse_prefer_wait(request: web.Request, max_wait: float) -> float:
    m = _WAIT.search(request.headers.get("Prefer", ""))
    return min(float(m.group(1)), max_wait) if m else 0.0


@routes.route("*", "/tools/{tool}/{path:.*}")
async def tool_call(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    tool = request.match_info["tool"]
    raw_path, _, query = request.raw_path.partition("?")
    prefix = f"/tools/{tool}"
    if not raw_path.startswith(prefix + "/"):
        raise BadRequest("the tool path must be /tools/{tool}/{path}")
    path = check_tool_path(raw_path[len(prefix):])
    call = ToolCall(
        call_id=new_id("call"),
        kind="http",
        tool=tool,
        method=request.method.upper(),
        path=path,
        query=query,
        body=await read_body(request, deps.cfg.limits.max_body_bytes),
        bearer=bearer(request),
        txn_token=request.headers.get("Txn-Token"),
        prefer_wait=parse_prefer_wait(request, deps.cfg.approvals.max_wait_s),
        content_type=request.headers.get("Content-Type", ""),
        connected=lambda: request.transport is not None and not request.transport.is_closing(),
    )
    auth = await authorize_call(call, deps)
    return await run_forward(request, auth, deps)


async def run_forward(
    request: web.Request, auth: Authorized, deps: Deps, event: str = "call_forwarded", rewrite: Rewrite | None = None,
    farewell: Callable[[EndReason], bytes] | None = None,
) -> web.StreamResponse:
    """Forward, audit the upstream answer (as `event`) before it goes out, then end the call's
    Txn-Token. `rewrite` may transform the answer (MCP tools/list). When the task ends meanwhile,
    the call is cut (guard.stages.forward.Cut, with `farewell` for an SSE answer) and the cut
    audited as `stream_closed`."""
    task_id, call_id, agent = auth.caller.task_id, auth.call.call_id, auth.caller.agent
    base = {"tool": auth.action.tool, "action": auth.action.name,
            "chain": list(auth.caller.chain), "parent_call_id": auth.caller.parent_call_id}
    finished = False

    async def on_headers(status: int, latency_s: float, complete: bool) -> None:
        nonlocal finished
        latency_ms = round(latency_s * 1000, 3)
        if complete:  # the tool has answered whole: the record and the call's end in one operation
            await deps.audit.append_and_finish(task_id, call_id, event, agent, status=status,
                                               latency_ms=latency_ms, **base)
            finished = True
        else:
            await deps.audit.append(task_id, event, agent, call_id=call_id, status=status,
                                    latency_ms=latency_ms, **base)
        log.debug("upstream_forwarded", task_id=task_id, call_id=call_id, status=status)

    async def on_cut(reason: EndReason) -> None:
        await deps.audit.append(task_id, "stream_closed", agent, call_id=call_id, detail=reason, **base)
        log.info("stream_closed", task_id=task_id, call_id=call_id, reason=reason)

    def watch() -> TaskWatch:
        return deps.task_ends.watch(task_id, agent)

    try:
        return await forward(request, auth, deps.http, on_headers, rewrite, Cut(watch, on_cut, farewell))
    except GuardError as err:
        if err.code in ("upstream_unavailable", "upstream_timeout") and not finished:
            await deps.audit.append_and_finish(task_id, call_id, "call_failed", agent, status=err.status,
                                               detail=err.code, **base)
            finished = True
        raise
    finally:
        if not finished:
            await finish_quietly(deps.store, task_id, call_id)
