"""A tool for the chain tests (tests/app/test_chains.py): an aiohttp app that, when called
through the guard, makes the chained calls its JSON body lists, with the Txn-Token it received.
The tests serve `make_app(guard_url)` in their own loop; as a process of its own:

    python -m tests.support.chain_tool --port P --guard-url http://127.0.0.1:G

Body: {"steps": [{"tool": "b", "path": "/run", "body": {...}, "wait_for": "gate"}, ...]}; a
step's body may hold its own `steps`, so one process serves every hop of a chain (several
policy tools can point at it). A step with `wait_for` waits until the test opens that gate
with `POST /_gate/<name>` (a control endpoint that does not go through the guard).
The answer reports what the tool saw (credential introspection, Txn-Token claims and the
token itself, for the replay test) and the outcome of every step.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
from aiohttp import web

GUARD = web.AppKey("guard", str)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
GATES = web.AppKey("gates", dict)
WAITING = web.AppKey("waiting", set)


def _gate(app: web.Application, name: str) -> asyncio.Event:
    gates: dict[str, asyncio.Event] = app[GATES]
    return gates.setdefault(name, asyncio.Event())


async def open_gate(request: web.Request) -> web.Response:
    _gate(request.app, request.match_info["name"]).set()
    return web.json_response({"open": True})


async def waiting(request: web.Request) -> web.Response:
    return web.json_response({"waiting": request.match_info["name"] in request.app[WAITING]})


async def _introspect(app: web.Application, authorization: str) -> dict[str, Any]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return {"active": False, "missing": True}
    async with app[CLIENT].post(f"{app[GUARD]}/v1/credentials/introspect", json={"token": token}) as r:
        info: dict[str, Any] = await r.json()
        return info


async def _step(app: web.Application, txn_token: str, step: dict[str, Any]) -> dict[str, Any]:
    gate = step.get("wait_for")
    if gate:
        app[WAITING].add(gate)
        await _gate(app, gate).wait()
        app[WAITING].discard(gate)
    url = f"{app[GUARD]}/tools/{step['tool']}{step.get('path', '/run')}"
    async with app[CLIENT].request(step.get("method", "POST"), url, json=step.get("body", {}),
                                   headers={"Txn-Token": txn_token}) as r:
        answer: Any = await r.json(content_type=None)
    out: dict[str, Any] = {"tool": step["tool"], "status": r.status, "answer": answer}
    if r.status >= 400 and isinstance(answer, dict):
        out["code"] = answer.get("code")
        out["rule_id"] = answer.get("rule_id")
    return out


async def serve(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    txn_token = request.headers.get("Txn-Token", "")
    credential = await _introspect(request.app, request.headers.get("Authorization", ""))
    results = [await _step(request.app, txn_token, s) for s in (body.get("steps") or [])]
    return web.json_response({
        "path": request.path,
        "credential": credential,
        "txn": jwt.decode(txn_token, options={"verify_signature": False}) if txn_token else None,
        "txn_token": txn_token,
        "results": results,
    })


async def _client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        app[CLIENT] = session
        yield


def make_app(guard_url: str) -> web.Application:
    app = web.Application()
    app[GUARD] = guard_url.rstrip("/")
    app[GATES] = {}
    app[WAITING] = set()
    app.cleanup_ctx.append(_client)
    app.router.add_post("/_gate/{name}", open_gate)
    app.router.add_get("/_waiting/{name}", waiting)
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--guard-url", required=True)
    args = p.parse_args()
    web.run_app(make_app(args.guard_url), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
