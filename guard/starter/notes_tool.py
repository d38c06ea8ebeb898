"""notes: a tiny in-memory notes service behind guard (written by `guard init`).

    python notes_tool.py            # listens on 127.0.0.1:{{TOOL_PORT}}, trusts the guard at {{GUARD_URL}}

Every request must carry the single-use credential guard minted for it: guard.tool checks it
(signature against guard's JWKS, audience, expiry, this very request, single use) before any
handler runs, and tells the handler which task and agent the call belongs to.
"""

from __future__ import annotations

import itertools
import os

from aiohttp import web

from guard.tool import Verifier
from guard.tool.aiohttp import credential, protect

GUARD_URL = os.environ.get("GUARD_URL", "{{GUARD_URL}}")
PORT = int(os.environ.get("NOTES_PORT", "{{TOOL_PORT}}"))

NOTES: dict[str, dict[str, str]] = {}
IDS = itertools.count(1)


async def list_notes(request: web.Request) -> web.Response:
    return web.json_response({"notes": list(NOTES.values())})


async def read_note(request: web.Request) -> web.Response:
    note = NOTES.get(request.match_info["id"])
    return web.json_response(note) if note else web.json_response({"detail": "no such note"}, status=404)


async def write_note(request: web.Request) -> web.Response:
    try:
        data = await request.json()
    except ValueError:
        return web.json_response({"detail": "the body must be JSON"}, status=400)
    if not isinstance(data, dict) or not isinstance(data.get("title"), str):
        return web.json_response({"detail": "a note needs a title"}, status=400)
    cred = credential(request)
    note = {"id": str(next(IDS)), "title": data["title"], "body": str(data.get("body", "")),
            "author": cred.agent, "task": cred.task}
    NOTES[note["id"]] = note
    return web.json_response(note, status=201)


async def delete_note(request: web.Request) -> web.Response:
    if NOTES.pop(request.match_info["id"], None) is None:
        return web.json_response({"detail": "no such note"}, status=404)
    return web.Response(status=204)


def make_app() -> web.Application:
    app = protect(web.Application(), Verifier(GUARD_URL, "notes"))
    app.router.add_get("/notes", list_notes)
    app.router.add_get("/notes/{id}", read_note)
    app.router.add_post("/notes", write_note)
    app.router.add_delete("/notes/{id}", delete_note)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=PORT)
