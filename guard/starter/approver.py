"""approver: a webhook receiver that approves every step-up guard announces (written by `guard init`).

    python approver.py              # listens on 127.0.0.1:{{APPROVER_PORT}}/hook

guard POSTs `approval.requested` with a `Guard-Signature` made with GUARD_WEBHOOK_SECRET_TEAM; this
receiver checks it, then posts a decision signed with the same secret to the approval's
`decision_url`. A real one asks a person first (chat, ticket, the review page).
"""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
from aiohttp import web

from guard.approvals.signature import SignatureError, sign, verify

SECRET = os.environ["GUARD_WEBHOOK_SECRET_TEAM"]
PORT = int(os.environ.get("APPROVER_PORT", "{{APPROVER_PORT}}"))
APPROVER = "team-lead@example.com"
PENDING: set[asyncio.Task[None]] = set()


async def approve(decision_url: str) -> None:
    body = json.dumps({"decision": "approve", "approver": APPROVER, "reason": "looks fine"}).encode()
    headers = {"Content-Type": "application/json", "Guard-Signature": sign(SECRET, body)}
    async with aiohttp.ClientSession() as http, http.post(decision_url, data=body, headers=headers) as r:
        print(f"approved {decision_url}: {r.status}", flush=True)


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        verify(request.headers.get("Guard-Signature", ""), body, SECRET)
    except SignatureError:
        return web.json_response({"error": "bad signature"}, status=401)
    payload = json.loads(body)
    if payload.get("type") == "approval.requested":
        task = asyncio.ensure_future(approve(payload["decision_url"]))  # answer the webhook first
        PENDING.add(task)
        task.add_done_callback(PENDING.discard)
    return web.json_response({"received": payload.get("approval_id")})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=PORT)
