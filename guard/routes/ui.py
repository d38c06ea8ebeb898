"""The review page at `/ui`: static files from guard/ui, with a strict CSP. It reads the API
(GET /v1/tasks, /v1/approvals, /v1/agents) with the reviewer's own token."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from guard.errors import NotFound

__all__ = ["SECURITY_HEADERS", "routes"]

routes = web.RouteTableDef()
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_UI_FILE = re.compile(r"^[a-z0-9_-]{1,64}\.(?:js|css|png|svg)$")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _ui_response(path: Path, content_type: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return web.Response(body=path.read_bytes(), content_type=content_type, headers=headers)


@routes.get("/ui")
async def ui_index(request: web.Request) -> web.Response:
    return _ui_response(UI_DIR / "index.html", "text/html")


@routes.get("/ui/")
async def ui_index_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


@routes.get("/ui/{name}")
async def ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = UI_DIR / name
    if not _UI_FILE.match(name) or not path.is_file():
        raise NotFound("no such file")
    return _ui_response(path, _TYPES[path.suffix])
