"""notes: an in-memory notes service, the simplest tool that sits behind guard.

    python -m examples.notes --port 9101 --guard-url http://127.0.0.1:8080

Endpoints (guard's policy names them as actions of tool "notes"):
    GET    /notes?q=word   list        POST   /notes        write  {title, body, tags}
    GET    /notes/{id}     read        DELETE /notes/{id}   delete

Every request must carry a guard credential; guard.tool checks it (see examples/toolkit.py).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from examples.toolkit import parse_args, run, tool_app
from guard.tool.aiohttp import credential

__all__ = ["Note", "NoteBook", "make_app"]


@dataclass
class Note:
    id: str
    title: str
    body: str
    tags: list[str]
    author: str  # the agent the credential was minted for
    task_id: str  # the task the call belonged to


@dataclass
class NoteBook:
    """The whole database: a dict and a counter."""

    notes: dict[str, Note] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


NOTEBOOK = web.AppKey("notebook", NoteBook)


def _not_found(note_id: str) -> web.Response:
    return web.json_response({"error": "not_found", "detail": f"no note {note_id}"}, status=404)


def _bad_request(detail: str) -> web.Response:
    return web.json_response({"error": "bad_request", "detail": detail}, status=400)


async def list_notes(request: web.Request) -> web.Response:
    q = request.query.get("q", "").lower()
    found = [
        asdict(n)
        for n in request.app[NOTEBOOK].notes.values()
        if q in n.title.lower() or q in n.body.lower() or q in (t.lower() for t in n.tags)
    ]
    return web.json_response({"notes": found})


async def read_note(request: web.Request) -> web.Response:
    note_id = request.match_info["id"]
    note = request.app[NOTEBOOK].notes.get(note_id)
    return web.json_response(asdict(note)) if note else _not_found(note_id)


async def write_note(request: web.Request) -> web.Response:
    try:
        data: Any = await request.json()
    except ValueError:
        return _bad_request("body must be JSON")
    if not isinstance(data, dict):
        return _bad_request("body must be a JSON object")
    title, body, tags = data.get("title"), data.get("body", ""), data.get("tags", [])
    if not isinstance(title, str) or not title:
        return _bad_request("title must be a non-empty string")
    if not isinstance(body, str):
        return _bad_request("body must be a string")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return _bad_request("tags must be a list of strings")

    book = request.app[NOTEBOOK]
    cred = credential(request)
    note = Note(
        id=str(next(book.ids)),
        title=title,
        body=body,
        tags=tags,
        author=cred.agent,
        task_id=cred.task,
    )
    book.notes[note.id] = note
    return web.json_response(asdict(note), status=201)


async def delete_note(request: web.Request) -> web.Response:
    note_id = request.match_info["id"]
    if request.app[NOTEBOOK].notes.pop(note_id, None) is None:
        return _not_found(note_id)
    return web.Response(status=204)


def make_app(guard_url: str) -> web.Application:
    app = tool_app("notes", guard_url)
    app[NOTEBOOK] = NoteBook()
    app.router.add_get("/notes", list_notes)
    app.router.add_post("/notes", write_note)
    app.router.add_get("/notes/{id}", read_note)
    app.router.add_delete("/notes/{id}", delete_note)
    return app


def main() -> None:
    args = parse_args("notes: an example tool behind guard", default_port=9101)
    run(make_app(args.guard_url), args.port)


if __name__ == "__main__":
    main()
