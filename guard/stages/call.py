"""The one ToolCall builder: an http tool call and an MCP request become the same value, from
what the front end parsed and the request's headers."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from guard.domain import PLAIN, Presented, ToolCall
from guard.identity.tokens import new_id

__all__ = ["parse_prefer_wait", "tool_call"]

_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


def parse_prefer_wait(prefer: str, max_wait: float) -> float:
    """`Prefer: wait=N`, capped at `max_wait` (0 without it)."""
    m = _WAIT.search(prefer)
    return min(float(m.group(1)), max_wait) if m else 0.0


def tool_call(
    kind: Literal["http", "mcp"],
    tool: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    headers: Mapping[str, str],
    max_wait: float,
    connected: Callable[[], bool],
    token: str | None,
    presented: Presented = PLAIN,
    mcp_action: str | None = None,
    mcp_args: Any = None,
    counted: bool = True,
    audience: str = "guard",
) -> ToolCall:
    """A new call (with its id). `token` is the one of the Authorization header (Bearer or DPoP
    scheme), `presented` what the request proves besides it (guard.identity.binding.presented).
    `Prefer: wait` is honoured only for a counted call (an http tool call or MCP tools/call)."""
    return ToolCall(
        call_id=new_id("call"),
        kind=kind,
        tool=tool,
        method=method.upper(),
        path=path,
        query=query,
        body=body,
        bearer=token,
        txn_token=headers.get("Txn-Token"),
        prefer_wait=parse_prefer_wait(headers.get("Prefer", ""), max_wait) if counted else 0.0,
        content_type=headers.get("Content-Type", ""),
        mcp_action=mcp_action,
        mcp_args=mcp_args,
        counted=counted,
        connected=connected,
        presented=presented,
        audience=audience,
    )
