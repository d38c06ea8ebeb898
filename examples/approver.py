"""A small approval webhook receiver: verifies guard's signature, shows each request, and
posts a signed decision back to its `decision_url`.

    export GUARD_WEBHOOK_SECRET_FINANCE=dev-finance-secret
    python -m examples.approver --approver carol@acme.example            # decide in the terminal
    python -m examples.approver --approver carol@acme.example --auto approve

guard POSTs `approval.requested` to http://127.0.0.1:9200/hook (see examples/guard.yaml) with
`Guard-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. The receiver refuses
a bad or stale (more than 300 s off) signature with 401, answers 200 at once, and decides in
its own time: the decision is signed with the same secret, so it needs no token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["main", "make_app", "sign", "verify"]

TOLERANCE_S = 300


@dataclass(frozen=True)
class Settings:
    secret: str
    approver: str
    auto: str | None  # "approve" | "deny" | None (ask in the terminal)


SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", asyncio.Queue)
CLIENT = web.AppKey("client", aiohttp.ClientSession)


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(header: str, body: bytes, secret: str) -> bool:
    """True when `header` signs `body` with `secret` and its timestamp is within 300 s."""
    fields = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
    t, v1 = fields.get("t", ""), fields.get("v1", "")
    if not t.isdigit() or abs(time.time() - int(t)) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1)


def show(p: dict[str, Any]) -> None:
    task, call = p["task"], p["call"]
    print(f"\n== approval {p['approval_id']} (rule {p['rule_id']}), expires {time.ctime(p['expires_at'])}")
    print(f"   task {task['task_id']}: {task['purpose']!r} for {task['requested_by']} by {task['agent']}")
    print(f"   call {call['tool']}.{call['action']}  {call['method']} {call['path']}")
    print(f"   args {json.dumps(call['args'], ensure_ascii=False)}", flush=True)


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    if not verify(request.headers.get("Guard-Signature", ""), body, request.app[SETTINGS].secret):
        print("!! refused a request with a bad or stale signature", flush=True)
        return web.json_response({"error": "bad signature"}, status=401)
    payload = json.loads(body)
    if payload.get("type") != "approval.requested":
        return web.json_response({"ignored": payload.get("type")})
    show(payload)
    request.app[QUEUE].put_nowait(payload)
    return web.json_response({"received": payload["approval_id"]})


async def ask(payload: dict[str, Any], auto: str | None) -> tuple[str, str] | None:
    """The decision and reason: `auto`, or typed in the terminal (None: leave it pending)."""
    if auto:
        return auto, f"--auto {auto}"
    try:
        answer = await asyncio.to_thread(input, f"   approve or deny {payload['approval_id']}? [a/d/skip] ")
    except EOFError:
        return None
    choice = answer.strip().lower()
    if choice[:1] not in ("a", "d"):
        return None
    reason = await asyncio.to_thread(input, "   reason (optional): ")
    return ("approve" if choice.startswith("a") else "deny"), reason.strip()


async def decide(app: web.Application) -> None:
    """One request at a time: ask, then post the signed decision to decision_url."""
    settings = app[SETTINGS]
    while True:
        payload = await app[QUEUE].get()
        answer = await ask(payload, settings.auto)
        if answer is None:
            print(f"   left {payload['approval_id']} pending", flush=True)
            continue
        decision, reason = answer
        body = json.dumps({"approval_id": payload["approval_id"], "decision": decision,
                           "approver": settings.approver, "reason": reason}).encode()
        headers = {"Content-Type": "application/json", "Guard-Signature": sign(settings.secret, body)}
        try:
            async with app[CLIENT].post(payload["decision_url"], data=body, headers=headers) as r:
                print(f"   {decision} -> {r.status} {await r.text()}", flush=True)
        except aiohttp.ClientError as e:
            print(f"   could not post the decision: {e}", flush=True)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        app[CLIENT] = client
        app[QUEUE] = asyncio.Queue()
        worker = asyncio.get_running_loop().create_task(decide(app))
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


def make_app(secret: str, approver: str, auto: str | None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = Settings(secret, approver, auto)
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/hook", hook)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="approval webhook receiver for guard")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--approver", default=os.environ.get("APPROVER", "carol@acme.example"),
                        help="who decides (must be neither the task's requester nor its agent)")
    parser.add_argument("--auto", choices=["approve", "deny"], help="decide every request without asking")
    parser.add_argument("--secret-env", default="GUARD_WEBHOOK_SECRET_FINANCE")
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env)
    if not secret:
        print(f"set {args.secret_env} to the webhook's secret", file=sys.stderr)
        return 2
    print(f"approver {args.approver} listening on http://127.0.0.1:{args.port}/hook", flush=True)
    web.run_app(make_app(secret, args.approver, args.auto), host="127.0.0.1", port=args.port, print=None,
                access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
