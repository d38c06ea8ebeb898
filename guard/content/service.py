"""Content and tool integrity on the request path: findings in a call's arguments before it is
decided, findings in its result before the agent sees it, the task's data labels, and the values
a task received (for exfiltration).

`ContentGuard.applies(policies)` is False when neither `inspect.detectors` nor any policy uses
content (data labels, redact, content or task.data matches): then the pipeline never calls it
and an allowed call costs nothing more."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDictProxy

from guard.audit.log import AuditLog
from guard.config import Config
from guard.content.detectors import Detectors, Finding, Scan
from guard.content.flow import MAX_TOKENS, WHOLE_MIN, arg_digests, strings, token_digest, value_digests
from guard.content.pins import changed_key
from guard.domain import Action, Authorized, ToolCall
from guard.errors import ContentBlocked, ToolChanged
from guard.log import get_logger
from guard.mcp.rpc import REFUSED
from guard.policy import CallContext, PolicySet, ToolSpec
from guard.stores.base import ContentStore

__all__ = ["ArgsView", "ContentGuard", "ResultInspector"]

log = get_logger("guard.content")
CHANGED_TTL_S = 1.0  # how long an instance reuses its read of a tool's changed definitions
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(slots=True)
class ArgsView:
    """What the content checks found before a call is decided."""

    scan: Scan
    task_data: frozenset[str] = frozenset()
    flow_source: str | None = None  # the call whose result a value in these arguments came from


def uses_content(policies: PolicySet) -> bool:
    if any(t.returns or t.egress or t.redact or t.pin != "off" for t in policies.tools.values()):
        return True
    return any(r.content is not None for r in policies.rules)


def uses_task_data(policies: PolicySet) -> bool:
    return any(r.content is not None and r.content.data is not None for r in policies.rules)


class ContentGuard:
    def __init__(self, cfg: Config, store: ContentStore, audit: AuditLog) -> None:
        self.detectors = Detectors(cfg.inspect.detectors, own_issuer=cfg.issuer)
        self.max_bytes = cfg.inspect.max_bytes
        self.store = store
        self.audit = audit
        self._applies: tuple[int, bool, bool] = (0, False, False)  # (id of the policy set, applies, task data)
        self._changed: dict[str, tuple[float, dict[str, str]]] = {}  # tool -> (until, changed definitions)
        self._every_call = False  # every call's arguments are checked (detectors, content rules)

    def applies(self, policies: PolicySet) -> bool:
        """Whether anything of content integrity is on (detectors, or content in the policies)."""
        self._refresh(policies)
        return self._applies[1]

    def applies_to(self, policies: PolicySet, tool: ToolSpec) -> bool:
        """Whether a call to `tool` needs the argument checks: detectors on, a rule on content or
        task data, or the tool is external (exfiltration) or a pinned MCP tool."""
        self._refresh(policies)
        return self._every_call or tool.egress or (tool.kind == "mcp" and tool.pin != "off")

    def _refresh(self, policies: PolicySet) -> None:
        if self._applies[0] != id(policies):
            self._applies = (id(policies), bool(self.detectors) or uses_content(policies), uses_task_data(policies))
            self._every_call = bool(self.detectors) or any(r.content is not None for r in policies.rules)

    # -- arguments -----------------------------------------------------------------------------

    def _arg_value(self, call: ToolCall, action: Action) -> Any:
        """The arguments as inspected: the JSON arguments, or the form or text body of an http call."""
        ctype = call.content_type.split(";", 1)[0].strip().lower()
        if call.kind == "http" and call.body and ctype and ctype != "application/json" and not ctype.endswith("+json"):
            text = call.body[: self.max_bytes + 1].decode("utf-8", "replace")
            body: Any = dict(parse_qsl(text, keep_blank_values=True)) \
                if ctype == "application/x-www-form-urlencoded" else text
            return {"args": action.args, "body": body}
        return action.args

    async def before(self, call: ToolCall, task_id: str, agent: str, tool: ToolSpec,
                     action: Action) -> ArgsView | None:
        """Refuse a changed MCP tool definition; inspect the arguments, audit each finding, read the
        task's data labels when rules use them, and, for a tool with `egress: external`, look up the
        values the task received. None when only the pin was to be checked."""
        if call.kind == "mcp" and tool.pin != "off":
            await self._check_pin(tool, action.name)
            if not (self._every_call or tool.egress):
                return None
        value = self._arg_value(call, action)
        scan = self.detectors.scan(value, self.max_bytes) if self.detectors else Scan()
        if len(call.body) > self.max_bytes:
            scan.uninspected = True
        view = ArgsView(scan)
        for finding in scan.findings:
            await self._flagged(task_id, agent, call.call_id, tool.name, action.name, finding, "args")
        if self._applies[2]:
            view.task_data = await self.store.task_data(task_id)
        if tool.egress:
            digests = arg_digests(strings(value, self.max_bytes))
            digests.update(token_digest(f.value) for f in scan.findings)
            found = await self.store.recall_values(task_id, digests)
            if found:
                view.flow_source = sorted(found.values())[0]
        return view

    async def changed(self, tool: str) -> dict[str, str]:
        """The changed definitions of `tool` (name -> digest, "" once settled), read from the store
        at most once a second per tool: a change seen at another instance is refused here within
        CHANGED_TTL_S; one seen here at once (`note_changed`)."""
        now = time.monotonic()
        hit = self._changed.get(tool)
        if hit is not None and hit[0] > now:
            return hit[1]
        changed = await self.store.tool_pins(changed_key(tool))
        self._changed[tool] = (now + CHANGED_TTL_S, changed)
        return changed

    def note_changed(self, tool: str, changes: dict[str, str]) -> None:
        hit = self._changed.get(tool)
        if hit is not None:
            hit[1].update(changes)

    async def _check_pin(self, tool: ToolSpec, name: str) -> None:
        """A tools/call of an MCP tool whose definition changed from its pin (or, with pins named in
        the policy, that is not named) is refused `tool_changed`, and nothing is forwarded."""
        if tool.pin == "sha256" and name not in tool.pins:
            raise ToolChanged(f"{name} has no pin in the policy of {tool.name}")
        changed = await self.changed(tool.name)
        if changed.get(name):
            raise ToolChanged(f"the definition of {name} changed since it was pinned: an admin must accept it "
                              f"(POST /v1/tools/{tool.name}/pins)")

    async def _flagged(self, task_id: str, agent: str, call_id: str, tool: str, action: str, finding: Finding,
                       where: str) -> None:
        await self.audit.append(task_id, "content_flagged", agent, call_id=call_id, tool=tool, action=action,
                                detail={**finding.detail(), "in": where})
        log.info("content_flagged", tool=tool, detector=finding.detector,
                 kind=finding.kind, location=finding.location, source=where)

    # -- results -------------------------------------------------------------------------------

    def rewrite(self, auth: Authorized, tool: ToolSpec, policies: PolicySet
                ) -> Callable[[CIMultiDictProxy[str]], ResultInspector | None] | None:
        """The rewriter of this call's result, or None when nothing is done with results of `tool`."""
        if not (self.detectors or tool.returns or tool.redact):
            return None
        inspector = ResultInspector(self, auth, tool, policies)

        def make(headers: CIMultiDictProxy[str]) -> ResultInspector | None:
            return inspector.for_headers(headers)

        return make


@dataclass(slots=True)
class _Pending:
    findings: list[Finding] = field(default_factory=list)
    remembered: dict[str, str] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)


class ResultInspector:
    """Rewrites a result on its way back (guard.stages.forward.BodyRewriter): a JSON answer is
    read whole (up to `max_bytes`), an event stream event by event (an event larger than
    `max_bytes` passes unread), text as text. Findings are redacted when the tool says so; what
    was found is audited, labelled and remembered by `settle()` before the bytes are written."""

    def __init__(self, guard: ContentGuard, auth: Authorized, tool: ToolSpec, policies: PolicySet) -> None:
        self.guard, self.auth, self.tool, self.policies = guard, auth, tool, policies
        self.mcp = auth.call.kind == "mcp"
        self.blocked: str | None = None  # the rule that withheld the result (content: {result: [...]})
        self.block_audited = False
        self.mode = "json"
        self.chunks: list[bytes] = []
        self.size = 0
        self.passing = False  # past max_bytes (or unreadable): the rest passes untouched
        self.pending = _Pending(labels=set(tool.returns))
        self.sse_buffer = b""

    def for_headers(self, headers: CIMultiDictProxy[str]) -> ResultInspector | None:
        ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        coding = headers.get("Content-Encoding", "").strip().lower()
        if coding not in ("", "identity"):
            self._uninspected("the answer is compressed")
            return self  # passes untouched; the tool's labels still apply
        if ctype == "text/event-stream":
            self.mode = "sse"
        elif ctype == "application/json" or ctype.endswith("+json"):
            self.mode = "json"
        elif ctype.startswith("text/") or ctype == "application/x-www-form-urlencoded":
            self.mode = "text"
        else:
            self._uninspected(f"a {ctype or 'typeless'} answer is not inspected")
        return self

    def _uninspected(self, why: str) -> None:
        self.passing = True
        log.info("result_uninspected", tool=self.tool.name, reason=why)

    # BodyRewriter
    def feed(self, chunk: bytes) -> bytes:
        if self.passing:
            return chunk
        if self.mode == "sse":
            return self._feed_sse(chunk)
        self.size += len(chunk)
        if self.size > self.guard.max_bytes:
            held, self.chunks = b"".join(self.chunks), []
            self._uninspected("the answer is larger than inspect.max_bytes")
            return held + chunk
        self.chunks.append(chunk)
        return b""

    def close(self) -> bytes:
        if self.mode == "sse":
            rest, self.sse_buffer = self.sse_buffer, b""
            return self._event(rest) if rest.strip() and not self.passing else rest
        if self.passing:
            return b""
        body, self.chunks = b"".join(self.chunks), []
        return self._whole(body)

    async def settle(self) -> None:
        """Audit, label and remember what was found so far (before the bytes are sent)."""
        pending, self.pending = self.pending, _Pending()
        auth, guard = self.auth, self.guard
        task_id, agent = auth.caller.task_id, auth.caller.agent
        for finding in pending.findings:
            await guard._flagged(task_id, agent, auth.call.call_id, self.tool.name, auth.action.name, finding,
                                 "result")
            pending.labels.add(finding.kind)
            for d in value_digests(finding.value):
                pending.remembered.setdefault(d, auth.call.call_id)
        if self.blocked is not None and not self.block_audited:
            await guard.audit.append(task_id, "result_blocked", agent, call_id=auth.call.call_id, tool=self.tool.name,
                                     action=auth.action.name, rule_id=self.blocked, detail="content_blocked")
            log.info("result_blocked", rule_id=self.blocked)
            self.block_audited = True
        if pending.labels:
            await guard.store.add_task_data(task_id, pending.labels)
        if pending.remembered:
            await guard.store.remember_values(task_id, pending.remembered)

    # the work
    def _feed_sse(self, chunk: bytes) -> bytes:
        self.sse_buffer += chunk
        out: list[bytes] = []
        while (m := _EVENT_END.search(self.sse_buffer)) is not None:
            event, self.sse_buffer = self.sse_buffer[: m.start()], self.sse_buffer[m.end():]
            out.append(self._event(event) + m.group(0))
        if len(self.sse_buffer) > self.guard.max_bytes:  # one event too large to hold: it passes unread
            out.append(self.sse_buffer)
            self.sse_buffer = b""
            self._uninspected("an event is larger than inspect.max_bytes")
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        lines = re.split(rb"\r\n|\n|\r", event)
        data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
        if not data:
            return event
        raw = b"\n".join(data)
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON (or too deep): passes as it is
            return event
        rewritten = self._value(message)
        if rewritten is message:
            return event
        kept = [ln for ln in lines if not ln.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + _dump(rewritten)])

    def _whole(self, body: bytes) -> bytes:
        if not body:
            return body
        if self.mode == "text":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                return body
            out = self._value(text)
            return body if out is text else str(out).encode("utf-8")
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._uninspected("the answer is not JSON guard can read")
            return body
        out = self._value(value)
        return body if out is value else _dump(out)

    def _value(self, value: Any) -> Any:
        """The value with findings redacted as the tool says (`value` itself when nothing changed)."""
        part = value.get("result") if self.mcp and isinstance(value, dict) and "result" in value else value
        base = "$.result" if part is not value else "$"
        guard = self.guard
        redacted, changed = part, False
        if guard.detectors:
            redacted, scan = guard.detectors.redact(part, self.tool.redact, guard.max_bytes, base)
            self.pending.findings.extend(scan.findings)
            changed = any(f.kind in self.tool.redact for f in scan.findings)
            if scan.findings:
                denial = self._denial(scan.kinds)
                if denial is not None:
                    return denial
        if "private" in self.tool.returns:
            for text in strings(part, guard.max_bytes, keys=False):
                for d in value_digests(text, WHOLE_MIN):
                    self.pending.remembered.setdefault(d, self.auth.call.call_id)
                if len(self.pending.remembered) >= MAX_TOKENS:
                    break
        if not changed:
            return value
        return {**value, "result": redacted} if part is not value else redacted


    def _denial(self, kinds: frozenset[str]) -> Any | None:
        """A deny rule matching `content: {result: [...]}`: the result withheld, in its place the
        problem (an MCP result: the JSON-RPC error carrying it)."""
        auth = self.auth
        task = auth.state.task
        ctx = CallContext(agent=auth.caller.agent, tool=auth.action.tool, action=auth.action.name,
                          args=auth.action.args, task_purpose=task.purpose, task_labels=task.labels,
                          chain=auth.caller.chain, history=auth.state.history, content_result=kinds)
        rule = self.policies.result_denial(ctx)
        if rule is None:
            return None
        self.blocked = self.blocked or rule.id
        err = ContentBlocked(f"the result holds content rule {rule.id} denies", rule_id=rule.id,
                             task_id=auth.caller.task_id, call_id=auth.call.call_id)
        if self.mcp:
            return {"jsonrpc": "2.0", "id": _rpc_id(auth.call.body),
                    "error": {"code": REFUSED, "message": err.detail, "data": err.problem()}}
        return err.problem()


def _rpc_id(body: bytes) -> Any:
    try:
        return json.loads(body).get("id")
    except (ValueError, AttributeError):
        return None


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
