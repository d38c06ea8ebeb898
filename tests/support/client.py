"""Policies and client helpers shared by the end-to-end and in-process tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from tests.support.guard import GuardLike

T = TypeVar("T")

AGENT = "spiffe://acme/agent/researcher"
OTHER = "spiffe://acme/agent/other"


def echo_policy(upstream_url: str, **extra_rules: Any) -> dict[str, Any]:
    """A tool `echo` with a few actions and rules exercising allow, deny, step_up and rates."""
    return {
        "tools": {
            "echo": {
                "kind": "http",
                "upstream": upstream_url,
                "actions": {
                    "read": {"method": "GET", "path": "/items/{id}"},
                    "write": {"method": "POST", "path": "/items"},
                    "delete": {"method": "DELETE", "path": "/items/{id}"},
                    "pay": {"method": "POST", "path": "/pay"},
                    "limited": {"method": "GET", "path": "/limited"},
                    "unruled": {"method": "GET", "path": "/unruled"},
                },
            },
        },
        "rules": [
            {"id": "read-ok", "effect": "allow", "match": {"tool": "echo", "action": ["read", "write", "delete"]}},
            {"id": "no-delete", "effect": "deny", "match": {"tool": "echo", "action": "delete"}},
            {"id": "no-secret-writes", "effect": "deny",
             "match": {"tool": "echo", "action": "write", "args": [{"path": "$.tags[*]", "eq": "secret",
                                                                     "quantifier": "any"}]}},
            {"id": "big-pay", "effect": "step_up", "approvers": "finance",
             "match": {"tool": "echo", "action": "pay", "args": [{"path": "$.amount", "gt": 100}]}},
            {"id": "small-pay", "effect": "allow",
             "match": {"tool": "echo", "action": "pay", "args": [{"path": "$.amount", "lte": 100}]}},
            {"id": "limited", "effect": "allow", "match": {"tool": "echo", "action": "limited"},
             "rate": {"calls": 2, "per_s": 60}},
        ],
        **extra_rules,
    }


async def create_task(session: aiohttp.ClientSession, url: str, idp_token: str, **body: Any) -> dict[str, Any]:
    payload = {"purpose": "weekly research report", "requested_by": "alice@acme.example", **body}
    async with session.post(f"{url}/v1/tasks", json=payload,
                            headers={"Authorization": f"Bearer {idp_token}"}) as r:
        data: dict[str, Any] = await r.json()
        assert r.status == 201, data
        return data


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy (a bounded wait, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def files_policy(upstream: str, **tool: Any) -> dict[str, Any]:
    return {
        "tools": {"files": {"kind": "mcp", "upstream": upstream, **tool}},
        "rules": [
            {"id": "reads", "effect": "allow",
             "match": {"agent": [AGENT], "tool": "files",
                       "action": ["search_files", "read_file", "slow_count", "whoami"]}},
            {"id": "no-deletes", "effect": "deny", "match": {"tool": "files", "action": ["delete_file"]}},
            {"id": "shares-need-approval", "effect": "step_up", "approvers": "finance",
             "match": {"agent": [AGENT], "tool": "files", "action": ["share_file"]}},
        ],
    }


async def task_token(guard: GuardLike, http: aiohttp.ClientSession, sub: str = AGENT) -> str:
    task = await create_task(http, guard.url, guard.token(sub))
    return str(task["task_token"])
