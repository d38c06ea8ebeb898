"""The async client: tasks, calls, step-ups, MCP sessions.

    async with Guard("http://127.0.0.1:8080", token=agent_token) as guard:
        async with guard.task(purpose="weekly report", tools=["notes"]) as t:
            note = await t.call("notes", "read", id=7)

What is retried, and what never is:
- a request that never left (the connection could not be made) is retried, a few times, with
  backoff (tenacity): creating a task, polling an approval, ending a task, and a tool call too,
  since nothing reached the guard;
- a token from a `token` callable is fetched again once when the guard answers 401 to the task's
  creation (an expired IdP token);
- a tool call that was sent is never sent again: a lost answer is an error for the caller. The one
  repeat is the documented one: after its approval, the identical call is sent once more (the
  first was refused, not forwarded).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from guard.client.dpop import DpopKey
from guard.client.errors import ApprovalDenied, ApprovalRequired, GuardError, ToolError, from_problem

__all__ = ["Approval", "Guard", "Progress", "Task", "TokenSource"]

TokenSource = str | Callable[[], str | Awaitable[str]]
#: Called while a step-up waits: (the approval as the guard shows it, seconds waited so far).
Progress = Callable[["Approval", float], Any]
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Approval:
    """A step-up approval: `status` is pending, approved, denied, expired or consumed."""

    approval_id: str
    status: str
    tool: str | None = None
    action: str | None = None
    expires_at: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Approval:
        return cls(str(data["approval_id"]), str(data["status"]), data.get("tool"), data.get("action"),
                   data.get("expires_at"), data)


class Guard:
    """A connection to one guard, for one agent.

    `token`: the agent's IdP token, or a callable (sync or async) returning a fresh one.
    `dpop_key`: bind the agent's tasks to this key (every request then carries a DPoP proof).
    `cert`: (certificate file, key file) of the agent's mTLS client certificate (an X.509-SVID);
    `ca`: the CA bundle that verifies the guard's certificate (or `ssl`: an SSLContext of your own).
    """

    def __init__(self, url: str, token: TokenSource | None = None, *, dpop_key: DpopKey | None = None,
                 cert: tuple[str, str] | None = None, ca: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 timeout_s: float = 120.0, connect_attempts: int = 3) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.dpop_key = dpop_key
        if ssl_context is None and (cert or ca):
            ssl_context = ssl.create_default_context(cafile=ca)
            if cert:
                ssl_context.load_cert_chain(*cert)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._attempts = connect_attempts
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout,
                                                  connector=aiohttp.TCPConnector(ssl=self._ssl))
        return self._session

    async def agent_token(self) -> str | None:
        token = self._token
        if token is None or isinstance(token, str):
            return token
        value = token()
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    async def send(self, method: str, path: str, *, token: str | None, scheme: str = "Bearer",
                   json_body: Any = None, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   dpop_ath: bool = True) -> tuple[int, dict[str, str], bytes]:
        """One request to the guard (retried only when the connection could not be made, so nothing
        was sent). Returns (status, headers, body)."""
        url = self.url + path
        out = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            out["Content-Type"] = "application/json"
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(aiohttp.ClientConnectorError),
                                           stop=stop_after_attempt(self._attempts),
                                           wait=wait_exponential(multiplier=0.2, max=2), reraise=True):
            with attempt:
                if token is not None:
                    out["Authorization"] = f"{scheme} {token}"
                if self.dpop_key is not None:  # a fresh proof for each attempt: a proof is single use
                    out["DPoP"] = self.dpop_key.proof(method, url, token if dpop_ath else None)
                async with self.http.request(method, url, data=data, headers=out) as resp:
                    return resp.status, dict(resp.headers), await resp.read()
        raise AssertionError("unreachable")  # pragma: no cover

    def task(self, purpose: str, tools: list[str] | None = None, *, requested_by: str | None = None,
             max_calls: int | None = None, ttl_s: int | None = None, labels: dict[str, str] | None = None,
             step_up: Literal["raise", "wait"] = "raise", wait_s: float = 300.0, poll_s: float = 1.0,
             progress: Progress | None = None, on_error: Literal["complete", "revoke", "leave"] = "complete",
             admin_token: TokenSource | None = None) -> _TaskBlock:
        """`async with guard.task(...) as t:` creates the task and ends it with the block: completed
        when the block ends normally; on an exception completed too (`on_error="complete"`), revoked
        (`"revoke"`, which needs an `admin_token`: only an admin revokes) or left running (`"leave"`).

        `step_up="raise"`: a step-up raises `ApprovalRequired` (its `approval_id` says which);
        `"wait"`: the call waits for the decision (`Prefer: wait`, then polling the approval every
        `poll_s`, `progress` called each time) for up to `wait_s`, and goes through once approved."""
        if on_error == "revoke" and admin_token is None:
            raise ValueError("on_error='revoke' needs an admin_token: an agent cannot revoke its own task")
        body: dict[str, Any] = {"purpose": purpose}
        for key, value in (("tools", tools), ("requested_by", requested_by), ("max_calls", max_calls),
                           ("ttl_s", ttl_s), ("labels", labels)):
            if value is not None:
                body[key] = value
        return _TaskBlock(self, body, _Options(step_up, wait_s, poll_s, progress, on_error, admin_token))

    async def create_task(self, body: dict[str, Any], options: _Options | None = None) -> Task:
        """POST /v1/tasks (a 401 fetches a callable token once more: it may have expired)."""
        status, _, raw = 0, {}, b""
        for fresh in range(2):
            token = await self.agent_token()
            status, _, raw = await self.send("POST", "/v1/tasks", token=token, json_body=body, dpop_ath=False)
            if status != 401 or isinstance(self._token, str) or self._token is None or fresh:
                break
        data = _json(raw)
        if status != 201:
            raise _error(status, data)
        return Task(self, data, options or _Options())


@dataclass(frozen=True, slots=True)
class _Options:
    step_up: Literal["raise", "wait"] = "raise"
    wait_s: float = 300.0
    poll_s: float = 1.0
    progress: Progress | None = None
    on_error: Literal["complete", "revoke", "leave"] = "complete"
    admin_token: TokenSource | None = None


class _TaskBlock:
    def __init__(self, guard: Guard, body: dict[str, Any], options: _Options) -> None:
        self.guard, self.body, self.options = guard, body, options
        self.task: Task | None = None

    async def __aenter__(self) -> Task:
        self.task = await self.guard.create_task(self.body, self.options)
        return self.task

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self.task is not None
        if exc is None or self.options.on_error == "complete":
            await self.task.complete()
        elif self.options.on_error == "revoke":
            await self.task.revoke(f"the agent's block raised {type(exc).__name__}")


class Task:
    """A task of the agent: `task_id`, its `token`, and the calls made under it."""

    def __init__(self, guard: Guard, created: dict[str, Any], options: _Options) -> None:
        self.guard = guard
        self.task_id = str(created["task_id"])
        self.token = str(created["task_token"])
        self.scheme = "DPoP" if created.get("token_type") == "DPoP" else "Bearer"
        self.created = created
        self.options = options
        self._tools: dict[str, dict[str, Any]] | None = None
        self.ended = False

    # ------------------------------------------------------------------ what the task may reach

    async def tools(self) -> dict[str, dict[str, Any]]:
        """The task's tools and their actions (`GET /v1/tasks/{id}/tools`), read once."""
        if self._tools is None:
            data = await self._api("GET", f"/v1/tasks/{self.task_id}/tools")
            self._tools = {t["name"]: t for t in data["tools"]}
        return self._tools

    async def _api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, _, raw = await self.guard.send(method, path, token=token or self.token,
                                               scheme=self.scheme if token is None else "Bearer", json_body=body)
        data = _json(raw)
        if status >= 400:
            raise _error(status, data)
        return data

    # ------------------------------------------------------------------ calls

    async def call(self, tool: str, action: str, /, **args: Any) -> Any:
        """Call `action` of an http tool with `args`: the path's `{variables}` come from args, the
        rest goes in the query (GET, DELETE) or as the JSON body. Returns the tool's JSON answer
        (or text); a refusal raises guard's error, a tool's own error `ToolError`."""
        spec = (await self.tools()).get(tool)
        if spec is None:
            raise from_problem(404, {"code": "unknown_tool", "detail": f"this task has no tool {tool!r}"})
        if spec["kind"] != "http":
            raise ValueError(f"{tool} is an MCP tool: use `async with task.mcp({tool!r}) as session`")
        found = [a for a in spec["actions"] if a["name"] == action]
        if not found:
            raise from_problem(403, {"code": "unknown_action", "detail": f"{tool} has no action {action!r}"})
        method, template = str(found[0]["method"]), str(found[0]["path"])
        rest = dict(args)
        missing = [v for v in _VAR.findall(template) if v not in rest]
        if missing:
            raise TypeError(f"{tool}.{action} needs {', '.join(missing)}")
        path = _VAR.sub(lambda m: urllib.parse.quote(str(rest.pop(m.group(1))), safe=""), template)
        body = None
        if method in ("GET", "DELETE", "HEAD"):
            if rest:
                path += "?" + urllib.parse.urlencode(rest, doseq=True)
        elif rest:
            body = rest
        return await self.request(method, tool, path, json_body=body)

    async def request(self, method: str, tool: str, path: str, *, json_body: Any = None) -> Any:
        """A raw call of an http tool: `METHOD /tools/{tool}{path}`, with the step-up handling."""
        full = f"/tools/{tool}{path if path.startswith('/') else '/' + path}"
        headers: dict[str, str] = {}
        if self.options.step_up == "wait":
            headers["Prefer"] = f"wait={max(1, int(min(self.options.wait_s, 60)))}"
        started = time.monotonic()
        while True:
            status, _, raw = await self.guard.send(method, full, token=self.token, scheme=self.scheme,
                                                   json_body=json_body, headers=headers)
            data = _json(raw)
            if status < 400:
                return data
            err = _error(status, data)
            if not isinstance(err, ApprovalRequired) or self.options.step_up != "wait":
                raise err
            await self.wait_for_approval(err, started)  # approved: send the identical call once more

    async def wait_for_approval(self, required: ApprovalRequired, started: float | None = None) -> Approval:
        """Poll the approval until it is decided: return once approved, raise ApprovalDenied when it
        was denied or expired, or `required` again when `wait_s` is over."""
        started = time.monotonic() if started is None else started
        approval_id = required.approval_id
        if approval_id is None:
            raise required
        while True:
            approval = Approval.of(await self._api("GET", f"/v1/approvals/{approval_id}"))
            waited = time.monotonic() - started
            if self.options.progress is not None:
                done = self.options.progress(approval, waited)
                if inspect.isawaitable(done):
                    await done
            if approval.status == "approved":
                return approval
            if approval.status != "pending":
                raise ApprovalDenied(f"the approval is {approval.status}", approval_id=approval_id,
                                     task_id=self.task_id)
            if waited >= self.options.wait_s:
                raise required
            await asyncio.sleep(self.options.poll_s)

    async def approval(self, approval_id: str) -> Approval:
        return Approval.of(await self._api("GET", f"/v1/approvals/{urllib.parse.quote(approval_id, safe='')}"))

    @asynccontextmanager
    async def mcp(self, tool: str) -> AsyncIterator[Any]:
        """An MCP client session (the official `mcp` SDK, `pip install guard[demo]`) to an MCP tool
        through guard, authenticated with the task's token."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        if self.scheme == "DPoP":
            raise ValueError("an MCP session of a DPoP-bound task is not supported by this client yet")
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, timeout=60) as http, \
                Client(streamable_http_client(f"{self.guard.url}/mcp/{tool}", http_client=http)) as client:
            yield client

    # ------------------------------------------------------------------ the end

    async def complete(self) -> None:
        if not self.ended:
            await self._api("POST", f"/v1/tasks/{self.task_id}/complete")
            self.ended = True

    async def revoke(self, reason: str) -> None:
        source = self.options.admin_token
        token = source if isinstance(source, str) or source is None else source()
        if inspect.isawaitable(token):
            token = await token
        if not self.ended:
            await self._api("POST", f"/v1/tasks/{self.task_id}/revoke", {"reason": reason}, token=str(token))
            self.ended = True


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _error(status: int, data: Any) -> Exception:
    """guard's refusal (problem details with a `urn:guard:error:` type) or the tool's own error."""
    if isinstance(data, dict) and str(data.get("type", "")).startswith("urn:guard:error:"):
        return from_problem(status, data)
    return ToolError(status, data)


__all__ += ["ApprovalDenied", "ApprovalRequired", "GuardError", "ToolError"]
