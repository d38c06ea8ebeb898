"""A call's stages in order, read top to bottom (guard/stages/ holds each one):

    identify (authenticate → bind → the tool) → task → chain → match → evaluate → approve
    → admit (+ decision record) → mint → forward → finish

`handle` is the one way through, for an http tool call and every MCP message alike: the route
reads the call (guard.routes.call.read_call) and says how its answer goes (`Render`). A call
(http, MCP tools/call) runs `authorize_call`; other MCP traffic `authorize_passthrough`. Every
refusal of a call whose task is known is audited by one context manager (`_Refusals`) before
the error leaves."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any, Protocol

from aiohttp import web

from guard.audit.log import AuditLog
from guard.content.service import ArgsView
from guard.deps import Deps
from guard.domain import Action, Authorized, Caller, CallLimits, TaskState, ToolCall
from guard.errors import ContentBlocked, CredentialUnavailable, Denied, ExfiltrationBlocked, GuardError
from guard.log import bind_request, get_logger
from guard.policy import CallContext, Decision, PolicySet, ToolSpec
from guard.stages.admit import admit, admit_and_record
from guard.stages.approve import settle_approval
from guard.stages.authenticate import authenticate
from guard.stages.bind import bind
from guard.stages.chain import check_chain
from guard.stages.finish import finish_quietly, forward_and_finish
from guard.stages.forward import Client, Rewrite
from guard.stages.match import match_action, resolve_tool
from guard.stages.mint import mint_credentials
from guard.stages.task import load_active_task
from guard.tasks.ends import EndReason

__all__ = [
    "Render", "authorize_call", "authorize_passthrough", "handle", "identify", "record_refusal", "result_rewrite",
    "tool_visibility",
]

log = get_logger("guard.pipeline")


class Render(Client, Protocol):
    """The route's side of a call: where its answer goes (a guard.stages.forward.Client) and how
    MCP shapes it."""

    @property
    def passthrough(self) -> str | None:
        """MCP traffic other than tools/call (its method): not a call."""

    @property
    def event(self) -> str:
        """The audit event of the forward: call_forwarded, mcp_forwarded."""

    @property
    def farewell(self) -> Callable[[EndReason], bytes] | None:
        """The last SSE event when the task ends (MCP)."""

    def upstream(self, auth: Authorized) -> Authorized:
        """Where the call goes (MCP: its endpoint's origin, with the stream's idle timeout)."""
        ...

    async def rewrite(self, deps: Deps, auth: Authorized) -> Rewrite | None:
        """What a passed-through answer is rewritten by (MCP tools/list); None: untouched."""
        ...


async def handle(call: ToolCall, deps: Deps, render: Render) -> web.StreamResponse:
    """The one way through: authorize (a call, or passed-through MCP traffic) → forward → finish."""
    if render.passthrough is None:
        auth = await authorize_call(call, deps)
        rewrite = result_rewrite(deps, auth)
    else:
        auth = await authorize_passthrough(call, deps, render.passthrough)
        rewrite = await render.rewrite(deps, auth)
    return await forward_and_finish(render, render.upstream(auth), deps.upstreams, deps.audit, deps.store,
                                    deps.tool_ssl, deps.task_ends, render.event, rewrite, render.farewell)


def _allowed_tools(policies: PolicySet, caller: Caller, state: TaskState) -> frozenset[str] | None:
    """The task's tools capped by the agent's inventory entry (None: no cap)."""
    task = state.task
    allowed = frozenset(task.tools) if task.tools is not None else None
    entry = policies.agent_entry(caller.agent)
    if entry is not None and entry.tools is not None:
        allowed = frozenset(entry.tools) if allowed is None else allowed & frozenset(entry.tools)
    return allowed


async def identify(call: ToolCall, deps: Deps, policies: PolicySet) -> tuple[Caller, ToolSpec]:
    """authenticate → bind → the tool: who calls (its token, held by its holder) and what it calls."""
    if call.trace is not None:
        call.trace.stage("authenticate")
    caller = authenticate(call, deps.keys)
    bind_request(caller.task_id, call.call_id)  # every line logged from here on names the task and the call
    await bind(caller, call, policies, deps.store)
    return caller, resolve_tool(call, policies)


def _context(policies: PolicySet, caller: Caller, state: TaskState, action: Action) -> CallContext:
    task = state.task
    allowed = _allowed_tools(policies, caller, state)
    return CallContext(
        agent=caller.agent,
        tool=action.tool,
        action=action.name,
        args=action.args,
        task_purpose=task.purpose,
        task_labels=task.labels,
        allowed_tools=allowed,
        chain=caller.chain,
        history=state.history,
    )


def _with_content(ctx: CallContext, view: ArgsView) -> CallContext:
    return replace(ctx, task_data=view.task_data, content_args=view.scan.kinds, uninspected=view.scan.uninspected,
                   flow=view.flow_source is not None)


async def authorize_call(call: ToolCall, deps: Deps) -> Authorized:
    """authenticate → task → match → evaluate → approve → admit → audit → mint.
    Raises a GuardError to refuse; every refusal that names a task is audited first.
    With telemetry on (`call.trace`), each stage is a child span of the call's."""
    trace = call.trace
    policies = deps.policies.current
    caller, tool = await identify(call, deps, policies)
    if trace is not None:
        trace.stage("task")
    state = deps.tasks.get(caller, policies)  # status is checked at admission, atomically
    cached = state is not None
    if state is None:
        state = await _read_task(caller, deps)
    async with _Refusals(deps, call, caller, call.mcp_action, count_denied=True) as refusal:
        refusal.stale = cached
        if trace is not None:
            trace.stage("chain")
        if caller.parent_call_id is not None:  # a chained call (a direct one has nothing to check)
            await check_chain(deps.store, caller, deps.cfg.limits.max_chain_depth, call.call_id)
        if trace is not None:
            trace.stage("match")
        action = match_action(call, tool)
        refusal.action = action.name
        if trace is not None:
            trace.stage("evaluate")
        ctx = _context(policies, caller, state, action)
        if deps.baselines is not None:  # off: no store round trip
            ctx = replace(ctx, unusual=await deps.baselines.observe(caller, action, call.call_id))
        view: ArgsView | None = None
        if deps.content.applies_to(policies, tool):  # off: one test more
            view = await deps.content.before(call, caller.task_id, caller.agent, tool, action)
            if view is not None:
                ctx = _with_content(ctx, view)
        decision = policies.evaluate(ctx)
        if cached and decision.effect != "allow":  # an ended task refuses as task_inactive, as ever
            state, refusal.stale = await _read_task(caller, deps), False
        approval_id = None
        if decision.effect == "deny":
            if decision.content_args:
                raise ContentBlocked(f"the arguments hold content rule {decision.rule_id} denies",
                                     rule_id=decision.rule_id)
            raise Denied(_deny_detail(decision), rule_id=decision.rule_id)
        if view is not None and view.flow_source is not None and not decision.allow_flow:
            raise ExfiltrationBlocked("the arguments carry a value this task received from a tool, to a tool whose "
                                      "arguments leave the organisation", source_call_id=view.flow_source)
        if decision.effect == "step_up":
            if trace is not None:
                trace.stage("approve")
            approval_id = await settle_approval(call, caller, state, action, decision, deps.approvals)
        limits = CallLimits(
            call_id=call.call_id,
            now=time.time(),
            history_entry=f"{action.tool}.{action.name}",
            parent_call_id=caller.parent_call_id,
            rates=decision.rates,
            count=call.counted,
            agent=caller.agent if call.counted else None,
        )
        if trace is not None:
            trace.stage("admit")
        fields = _audit_fields(call, caller, action, decision, approval_id)
        draft = deps.audit.draft(caller.task_id, "call_decided", caller.agent, effect="allow", **fields)
        record = await admit_and_record(deps.store, caller, limits, draft)  # one atomic store operation
    # The decision is durable before anything is forwarded; the credentials are made while
    # the writer makes it so (they go nowhere unless it is).
    durable = deps.audit.keep_started(record)
    if trace is not None:
        trace.stage("mint")
        trace.decided(caller, "allow", decision.rule_id, action.name)
        call = trace.to_tool(call)  # the forward span's traceparent, before the credential binds the body
    try:
        try:
            minted = await mint_credentials(
                call, caller, state, action, tool, deps.keys, deps.credentials,
                ttl_s=decision.credential_ttl_s or tool.credential.ttl_s or deps.cfg.limits.credential_ttl_s,
                txn_ttl_s=tool.timeout_s + 30,
            )
        finally:
            await durable
    except CredentialUnavailable as err:  # fail closed: nothing forwarded, the refusal audited
        await deps.audit.append_and_finish(
            caller.task_id, call.call_id, "call_failed", caller.agent, tool=action.tool, action=action.name,
            chain=list(caller.chain), parent_call_id=caller.parent_call_id, status=err.status, detail=err.code,
            credential={"mode": tool.credential.mode})
        raise
    except BaseException:
        await finish_quietly(deps.store, caller.task_id, call.call_id)
        raise
    log.info("call_decided", tool=action.tool, action=action.name, effect="allow", rule_id=decision.rule_id,
             reason=decision.reason)
    return Authorized(call, caller, state, action, decision.rule_id, tool.upstream, tool.timeout_s, minted, fields)


class _Refusals:
    """`async with _Refusals(...) as refusal:` a GuardError raised inside is audited as the
    refusal of `call` (naming `refusal.action` once known, with the task read afresh first when
    `refusal.stale`) and goes on. (A class, not @asynccontextmanager: it is entered on every call.)"""

    __slots__ = ("action", "call", "caller", "count_denied", "deps", "stale")

    def __init__(self, deps: Deps, call: ToolCall, caller: Caller, action: str | None, count_denied: bool) -> None:
        self.deps, self.call, self.caller, self.action = deps, call, caller, action
        self.count_denied = count_denied
        self.stale = False

    async def __aenter__(self) -> _Refusals:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: Any) -> None:
        if not isinstance(err, GuardError):
            return
        if self.stale:  # read afresh: an ended task answers task_inactive unrecorded, as when read first
            await _read_task(self.caller, self.deps)
        err.extra.setdefault("task_id", self.caller.task_id)
        err.extra.setdefault("call_id", self.call.call_id)
        await record_refusal(self.deps.audit, self.call, self.caller, self.action, err,
                             count_denied=self.count_denied and err.code != "approval_required")


async def _read_task(caller: Caller, deps: Deps) -> TaskState:
    """The caller's task from the store (TaskInactive unless active), remembered for later calls."""
    deps.tasks.drop(caller.task_id)
    state = await load_active_task(caller, deps.store, deps.task_ends, time.time())
    deps.tasks.put(state)
    return state


async def authorize_passthrough(call: ToolCall, deps: Deps, method: str) -> Authorized:
    """MCP traffic other than tools/call (initialize, ping, notifications, tools/list,
    resources/*, prompts/*, the GET stream, DELETE): authenticate → task active → the tool is
    within the task and `deny_methods` does not match → mint. Not counted against budget or
    rates; the caller audits the forward (`mcp_forwarded`)."""
    trace = call.trace
    policies = deps.policies.current
    caller, tool = await identify(call, deps, policies)
    state = await load_active_task(caller, deps.store, deps.task_ends, time.time())
    async with _Refusals(deps, call, caller, method, count_denied=False):
        if caller.parent_call_id is not None:
            await check_chain(deps.store, caller, deps.cfg.limits.max_chain_depth, call.call_id)
        allowed = _allowed_tools(policies, caller, state)
        if allowed is not None and tool.name not in allowed:
            raise Denied("the tool is outside what this task may use")
        if any(fnmatchcase(method, glob) for glob in tool.deny_methods):
            raise Denied(f"{method} is denied on {tool.name} (deny_methods)")
        limits = CallLimits(call_id=call.call_id, now=time.time(), history_entry=f"{tool.name}.{method}",
                            parent_call_id=caller.parent_call_id, count=False)
        await admit(deps.store, caller, limits)
    action = Action(tool.name, method, None)
    if trace is not None:
        trace.stage("mint")
        trace.decided(caller, "allow", None, method)
        call = trace.to_tool(call)
    try:
        minted = await mint_credentials(
            call, caller, state, action, tool, deps.keys, deps.credentials,
            ttl_s=tool.credential.ttl_s or deps.cfg.limits.credential_ttl_s,
            txn_ttl_s=tool.timeout_s + 30,
        )
    except GuardError as err:
        await finish_quietly(deps.store, caller.task_id, call.call_id)
        await record_refusal(deps.audit, call, caller, method, err)
        raise
    return Authorized(call, caller, state, action, None, tool.upstream, tool.timeout_s, minted)


def result_rewrite(deps: Deps, auth: Authorized) -> Rewrite | None:
    """What content inspection does with this call's result (None: it passes untouched)."""
    content, policies = deps.content, deps.policies.current
    if not content.applies(policies):
        return None
    tool = policies.tools.get(auth.action.tool)
    return content.rewrite(auth, tool, policies) if tool is not None else None


def tool_visibility(deps: Deps, auth: Authorized) -> Callable[[str], bool]:
    """For MCP tools/list: whether this task could ever be allowed to call an MCP tool name."""
    policies = deps.policies.current
    caller, task = auth.caller, auth.state.task
    allowed = _allowed_tools(policies, caller, auth.state)

    def visible(name: str) -> bool:
        return policies.could_allow(caller.agent, auth.action.tool, name, task.purpose, task.labels,
                                    allowed, caller.chain)

    return visible


def _deny_detail(decision: Decision) -> str:
    if decision.reason == "tool_not_in_task":
        return "the tool is outside what this task may use"
    if decision.reason == "chain_loop":
        return "the chain loops back to a tool already in it"
    if decision.rule_id is None:
        return "no rule allows this call"
    return f"denied by rule {decision.rule_id}"


def _audit_fields(
    call: ToolCall, caller: Caller, action: Action, decision: Decision, approval_id: str | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "call_id": call.call_id,
        "tool": action.tool,
        "action": action.name,
        "rule_id": decision.rule_id,
        "chain": list(caller.chain),
        "parent_call_id": caller.parent_call_id,
        "approval_id": approval_id,
        "args_digest": action.digest,
        "binding": caller.binding,
    }
    if decision.audit_args == "full":
        fields["args"] = action.args
    return fields


async def record_refusal(
    audit: AuditLog, call: ToolCall, caller: Caller, action: str | None, err: GuardError, count_denied: bool = False
) -> None:
    """The audit record (and log line) of a refused call of a known task; `count_denied` also
    counts it in the agent's inventory entry, in the same store operation."""
    effect = "step_up" if err.code == "approval_required" else "deny"
    await audit.append_and_count(
        caller.task_id, "call_decided", caller.agent, "call_denied" if count_denied else None,
        call_id=call.call_id, tool=call.tool, action=action, effect=effect,
        rule_id=err.extra.get("rule_id"), approval_id=err.extra.get("approval_id"),
        chain=list(caller.chain), parent_call_id=caller.parent_call_id, status=err.status, detail=err.code,
        binding=caller.binding, **({"source_call_id": err.extra["source_call_id"]}
                                   if "source_call_id" in err.extra else {}),
    )
    log.info("call_decided", tool=call.tool, action=action, effect=effect, rule_id=err.extra.get("rule_id"),
             reason=err.code)
    if call.trace is not None:
        call.trace.decided(caller, effect, err.extra.get("rule_id"), action)
