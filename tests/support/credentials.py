"""Helpers shared by the credential-provider end-to-end tests (tests/e2e/test_credentials_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.support.client import bearer
from tests.support.guard import Guard, GuardLike

AUDITOR = "sec@acme.example"


def tool_policy(upstream_url: str, credential: dict[str, Any], name: str = "notes",
                **actions: dict[str, str]) -> dict[str, Any]:
    """One http tool `name` with the given credential block and actions, every call allowed."""
    return {
        "tools": {name: {"kind": "http", "upstream": upstream_url, "credential": credential,
                         "actions": actions or {"read": {"method": "GET", "path": "/notes/{id}"},
                                                "write": {"method": "POST", "path": "/notes"}}}},
        "rules": [{"id": "all", "effect": "allow", "match": {"tool": name}}],
    }


async def audit_of(http: aiohttp.ClientSession, g: GuardLike, task_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{g.url}/v1/tasks/{task_id}/audit", headers=bearer(g.token(AUDITOR, "guard:auditor"))) as r:
        assert r.status == 200
        body = await r.json()
        assert body["verified"] is True
        return list(body["records"])


def everything_written(g: Guard) -> str:
    """The guard's log and every audit file: where no secret may ever appear."""
    texts = [g.log()]
    for p in sorted(Path(g.audit_dir()).rglob("*")):
        if p.is_file():
            texts.append(p.read_text(errors="replace"))
    return "\n".join(texts)


async def metrics_text(http: aiohttp.ClientSession, g: GuardLike) -> str:
    async with http.get(f"{g.url}/metrics") as r:
        return await r.text()
