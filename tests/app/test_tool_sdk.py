"""guard.tool against guard in process (its app on real sockets): an aiohttp tool and a FastAPI
tool behind it verify guard's credentials (JWKS, call digest, single use), see the task, agent,
chain and scope, and make their own chained calls through guard with no code for the Txn-Token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from starlette.requests import Request  # a module global: FastAPI reads the handler's annotations by name

from guard.tool import Credential, Verifier
from guard.tool.aiohttp import credential, protect, txn_token_middleware
from tests.app.conftest import AppFactory
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.credentials import audit_of
from tests.support.process import free_port


def chain_policy(front_port: int, notes_port: int, front_kind: str = "front") -> dict[str, Any]:
    """`front` (the tool under test) may save a note through guard while serving a call."""
    return {
        "tools": {
            front_kind: {"kind": "http", "upstream": f"http://127.0.0.1:{front_port}",
                         "actions": {"go": {"method": "POST", "path": "/go"},
                                     "look": {"method": "GET", "path": "/look/{id}"}}},
            "notes": {"kind": "http", "upstream": f"http://127.0.0.1:{notes_port}",
                      "actions": {"write": {"method": "POST", "path": "/notes"}}},
        },
        "rules": [
            {"id": "agent-uses-front", "effect": "allow",
             "match": {"agent": [AGENT], "tool": front_kind, "chain": {"depth_lte": 0}}},
            {"id": "front-saves-notes", "effect": "allow",
             "match": {"agent": [AGENT], "tool": "notes", "action": ["write"],
                       "chain": {"caller": front_kind, "depth_lte": 1}}},
        ],
    }


@asynccontextmanager
async def served(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


class CountingVerifier(Verifier):
    fetches = 0

    async def _fetch_jwks(self) -> None:
        self.fetches += 1
        await super()._fetch_jwks()


def notes_app(guard_url: str, seen: list[Credential]) -> web.Application:
    async def write(request: web.Request) -> web.Response:
        seen.append(credential(request))
        return web.json_response({"saved": (await request.json())["title"]}, status=201)

    app = protect(web.Application(), Verifier(guard_url, "notes"))
    app.router.add_post("/notes", write)
    return app


def front_app(guard_url: str, verifier: Verifier, seen: list[Credential], raw: list[str]) -> web.Application:
    """The tool under test: answers /look/{id}; /go saves a note through guard (a chained call)."""

    async def look(request: web.Request) -> web.Response:
        seen.append(credential(request))
        raw.append(request.headers["Authorization"])
        return web.json_response({"id": request.match_info["id"]})

    async def go(request: web.Request) -> web.Response:
        seen.append(credential(request))
        async with aiohttp.ClientSession(middlewares=(txn_token_middleware(guard_url),)) as s, \
                s.post(f"{guard_url}/tools/notes/notes", json={"title": "from front"}) as r:
            return web.json_response({"chained": r.status, "body": await r.json()})

    app = protect(web.Application(), verifier)
    app.router.add_get("/look/{id}", look)
    app.router.add_post("/go", go)
    return app


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_an_aiohttp_tool_sees_who_calls_and_refuses_what_guard_did_not_mint(
        app_factory: AppFactory, http: aiohttp.ClientSession) -> None:
    front_port, notes_port = free_port(), free_port()
    g = await app_factory(chain_policy(front_port, notes_port))
    seen: list[Credential] = []
    raw: list[str] = []
    verifier = CountingVerifier(g.url, "front")
    async with served(front_app(g.url, verifier, seen, raw), front_port), \
            served(notes_app(g.url, seen), notes_port):
        task = await create_task(http, g.url, g.token(AGENT))
        async with http.get(f"{g.url}/tools/front/look/7", headers=bearer(task["task_token"])) as r:
            assert r.status == 200 and await r.json() == {"id": "7"}
        (cred,) = seen
        assert (cred.task, cred.agent, cred.tool, cred.action, cred.scope, cred.chain) == (
            task["task_id"], AGENT, "front", "look", "front.look", ())

        direct = f"http://127.0.0.1:{front_port}/look/7"
        async with http.get(direct) as r:  # no credential at all
            assert r.status == 401 and r.headers["Content-Type"] == "application/problem+json"
            assert "missing" in (await r.json())["detail"]
        async with http.get(direct, headers={"Authorization": raw[0]}) as r:  # the same credential again
            assert r.status == 401 and "not active" in (await r.json())["detail"]
        async with http.get(f"http://127.0.0.1:{front_port}/look/8", headers={"Authorization": raw[0]}) as r:
            assert r.status == 401 and "different request" in (await r.json())["detail"]
        forged = raw[0][:-6] + ("AAAAAA" if not raw[0].endswith("AAAAAA") else "BBBBBB")
        async with http.get(direct, headers={"Authorization": forged}) as r:
            assert r.status == 401
        assert len(seen) == 1  # no refused request reached the handler
        assert verifier.fetches == 1  # JWKS read once, then cached

        # guard rotates its key: the next credential names a kid the tool has not seen, and it refetches
        verifier.refetch_min_s = 0
        rotated = (await g.cli("keys", "rotate", check=True)).stdout
        new_kid = rotated.split("kid ", 1)[1].split(" ", 1)[0]

        async def new_key_signs() -> bool:
            async with http.get(f"{g.url}/tools/front/look/9", headers=bearer(task["task_token"])) as r:
                return r.status == 200 and json.loads(
                    __import__("base64").urlsafe_b64decode(raw[-1].split(" ")[1].split(".")[0] + "==")
                ).get("kid") == new_kid

        await until(new_key_signs, "a credential signed with the new key, accepted")
        assert verifier.fetches == 2
    records = await audit_of(http, g, task["task_id"])
    assert [r["effect"] for r in records if r["event"] == "credential_introspected"][:2] == ["active", "inactive"]


async def test_guard_unreachable_is_503_and_the_handler_never_runs(http: aiohttp.ClientSession) -> None:
    port = free_port()
    seen: list[Credential] = []
    app = front_app(f"http://127.0.0.1:{free_port()}", Verifier(f"http://127.0.0.1:{free_port()}", "front"),
                    seen, [])
    async with served(app, port), http.get(f"http://127.0.0.1:{port}/look/1",
                                           headers={"Authorization": "Bearer a.b.c"}) as r:
        assert r.status == 401  # not even a JWT header: refused before asking anyone
    token = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsiLCJ0eXAiOiJjcmVkK2p3dCJ9.e30.c2ln"  # a cred+jwt header, kid k
    async with served(app, port), http.get(f"http://127.0.0.1:{port}/look/1",
                                           headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 503 and (await r.json())["title"] == "guard unavailable"
    assert seen == []


async def test_an_aiohttp_tools_chained_call_carries_the_txn_token_with_no_code(
        app_factory: AppFactory, http: aiohttp.ClientSession) -> None:
    front_port, notes_port = free_port(), free_port()
    g = await app_factory(chain_policy(front_port, notes_port))
    seen: list[Credential] = []
    async with served(front_app(g.url, Verifier(g.url, "front"), seen, []), front_port), \
            served(notes_app(g.url, seen), notes_port):
        task = await create_task(http, g.url, g.token(AGENT))
        async with http.post(f"{g.url}/tools/front/go", json={}, headers=bearer(task["task_token"])) as r:
            body = await r.json()
    assert body == {"chained": 201, "body": {"saved": "from front"}}
    front, notes = seen
    assert notes.chain == ("front",) and notes.task == front.task == task["task_id"] and notes.scope == "notes.write"
    records = await audit_of(http, g, task["task_id"])
    assert [r["rule_id"] for r in records if r["event"] == "call_decided"] == ["agent-uses-front", "front-saves-notes"]


async def test_a_fastapi_tool_with_the_asgi_middleware_and_httpx(app_factory: AppFactory,
                                                                  http: aiohttp.ClientSession) -> None:
    import fastapi  # the `tool` extra, in the dev lock: missing, the test fails rather than skips
    import httpx
    import uvicorn

    from guard.tool.asgi import GuardMiddleware
    from guard.tool.httpx import TxnTokenAuth

    front_port, notes_port = free_port(), free_port()
    g = await app_factory(chain_policy(front_port, notes_port, "fast"))
    seen: list[Credential] = []
    app = fastapi.FastAPI()
    app.add_middleware(GuardMiddleware, verifier=Verifier(g.url, "fast"), max_body_bytes=4096)

    @app.post("/go")
    async def go(request: Request) -> dict[str, Any]:
        seen.append(request.state.guard)
        payload = await request.json()  # the body the middleware checked reaches the handler
        async with httpx.AsyncClient(auth=TxnTokenAuth(g.url)) as client:
            r = await client.post(f"{g.url}/tools/notes/notes", json={"title": payload["title"]})
        return {"chained": r.status_code, "body": r.json()}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=front_port, log_level="warning"))
    serving = asyncio.ensure_future(server.serve())
    try:
        await until(lambda: asyncio.sleep(0, server.started), "uvicorn started")
        async with served(notes_app(g.url, seen), notes_port):
            task = await create_task(http, g.url, g.token(AGENT))
            async with http.post(f"{g.url}/tools/fast/go", json={"title": "via fastapi"},
                                 headers=bearer(task["task_token"])) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"chained": 201, "body": {"saved": "via fastapi"}}
            async with http.post(f"http://127.0.0.1:{front_port}/go", json={"title": "x"}) as r:
                assert r.status == 401 and (await r.json())["detail"] == "missing bearer credential"
            async with http.post(f"http://127.0.0.1:{front_port}/go", data=b"x" * 5000) as r:
                assert r.status == 413  # refused before the whole body is held
    finally:
        server.should_exit = True
        await serving
    front, notes = seen
    assert front.scope == "fast.go" and front.agent == AGENT and front.chain == ()
    assert notes.chain == ("fast",) and notes.task == task["task_id"]
