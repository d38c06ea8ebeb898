"""`GET /openapi.json` checked against the running guard: every documented path and method
exists, and every documented error answer it gives is problem details."""

from __future__ import annotations

import urllib.parse
from typing import Any

import aiohttp
import pytest

from tests.app.conftest import AppFactory
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.upstream import Upstream

ADMIN_ROLES = ("guard:admin", "guard:auditor", "guard:approver")
BODIES = {"TaskCreate": {"purpose": "checking the API"}, "Revoke": {"reason": "checking the API"},
          "Decision": {"decision": "deny", "reason": "checking the API"}}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in walk_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in walk_refs(v)]
    return []


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def error_codes(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, str]:
    """Documented error statuses -> their content type."""
    out = {}
    for status, resp in op["responses"].items():
        if int(status) >= 400:
            resp = resolve(doc, resp["$ref"]) if "$ref" in resp else resp
            out[status] = next(iter(resp["content"]))
    return out


async def call(http: aiohttp.ClientSession, method: str, url: str, op: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, str, Any]:
    body = None
    if "requestBody" in op:
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = BODIES[ref.rsplit("/", 1)[-1]]
    async with http.request(method.upper(), url, json=body, headers=headers) as r:
        ctype = r.headers.get("Content-Type", "").split(";")[0]
        data = await r.json(content_type=None) if ctype.endswith(("/json", "+json")) else await r.read()
        return r.status, ctype, data


async def test_document_matches_the_running_server(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard = await app_factory(echo_policy(upstream.url))
    async with http.get(f"{guard.url}/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"] == "3.1.0"
    for ref in walk_refs(doc):
        resolve(doc, ref)  # every $ref points somewhere
    for tag in ("tasks", "approvals", "audit", "tokens", "agents"):
        assert any(tag in op.get("tags", []) for item in doc["paths"].values() for op in item.values()), tag

    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/tools/echo/pay", json={"amount": 500},
                         headers=bearer(task["task_token"])) as r:
        approval_id = (await r.json())["approval_id"]
    real = {"task_id": task["task_id"], "approval_id": approval_id, "sub": urllib.parse.quote(AGENT, safe=""),
            "tool": "echo", "path": "items/1"}
    unknown = {**real, "task_id": "task_unknown", "approval_id": "appr_unknown", "tool": "nope"}
    admin = bearer(guard.token("root@acme.example", *ADMIN_ROLES))

    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            errors = error_codes(doc, op)
            attempts = [(fill(path, real), admin), (fill(path, unknown), admin)]
            if op.get("security") != []:
                attempts.append((fill(path, real), {}))
            for target, headers in attempts:
                status, ctype, data = await call(http, method, guard.url + target, op, headers)
                where = f"{method.upper()} {target} -> {status}"
                assert status != 405, where
                routed = not (status == 404 and isinstance(data, dict) and data.get("detail") == "no such endpoint")
                assert routed, f"{where}: documented but not served"
                if status >= 400:
                    assert str(status) in errors, f"{where}: undocumented error status"
                    assert ctype == errors[str(status)], where
                    if ctype == "application/problem+json":
                        assert data["status"] == status and data["code"] and data["detail"], where
                if not headers and "401" in errors:
                    assert status == 401, f"{where}: a secured endpoint answered without a token"
                checked += 1
    assert checked >= 60
    problems = [c for op in (o for item in doc["paths"].values() for o in item.values())
                for st, c in error_codes(doc, op).items() if c != "application/problem+json"]
    assert problems == ["application/json"]  # only MCP's JSON-RPC parse error is not problem details
