"""`POST /v1/tools/{tool}/pins` (admin): accept the current definitions of an MCP tool's tools
(guard.content.pins), all of them (`{}`) or those named (`{"names": [...]}`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from guard.content.pins import changed_key, definitions_key, seen_key
from guard.errors import BadRequest, UnknownTool
from guard.identity.auth import ADMIN, AUDITOR
from guard.log import get_logger
from guard.routes.common import DEPS, authorized, json_response, read_model

__all__ = ["routes"]

routes = web.RouteTableDef()
log = get_logger("guard.pins")


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str] | None = Field(default=None, max_length=1000)


@routes.get("/v1/tools/pins")
async def list_pins(request: web.Request) -> web.Response:
    """Every pinned MCP tool: its pins, and each changed definition beside its pin (the review page)."""
    deps = request.app[DEPS]
    await authorized(request, ADMIN, AUDITOR)
    out: list[dict[str, Any]] = []
    for name, spec in sorted(deps.policies.current.tools.items()):
        if spec.kind != "mcp" or spec.pin == "off":
            continue
        pins = dict(spec.pins) if spec.pin == "sha256" else await deps.store.tool_pins(name)
        changed = {n: d for n, d in (await deps.store.tool_pins(changed_key(name))).items() if d}
        pinned_defs = await deps.store.tool_pins(definitions_key(name, seen=False)) if changed else {}
        seen_defs = await deps.store.tool_pins(definitions_key(name, seen=True)) if changed else {}
        out.append({"tool": name, "pin": spec.pin, "pins": pins, "changed": [
            {"name": n, "pinned": {"digest": pins.get(n), "definition": _loads(pinned_defs.get(n))},
             "current": {"digest": d, "definition": _loads(seen_defs.get(n))}} for n, d in sorted(changed.items())]})
    return json_response({"tools": out})


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


@routes.post("/v1/tools/{tool}/pins")
async def pin_tools(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who = await authorized(request, ADMIN)
    name = request.match_info["tool"]
    spec = deps.policies.current.tools.get(name)
    if spec is None or spec.kind != "mcp":
        raise UnknownTool(f"no mcp tool named {name!r}")
    if spec.pin != "tofu":
        raise BadRequest(f"the pins of {name} are {'named in its policy' if spec.pin == 'sha256' else 'off'}")
    body = await read_model(request, PinRequest)
    seen = await deps.store.tool_pins(seen_key(name))
    names = sorted(seen) if body.names is None else body.names
    unseen = [n for n in names if n not in seen]
    if unseen:
        raise BadRequest(f"no definition of {', '.join(unseen)} has been seen in a tools/list answer of {name}")
    accepted = {n: seen[n] for n in names}
    await deps.store.set_pins(name, accepted)
    current = await deps.store.tool_pins(definitions_key(name, seen=True))
    await deps.store.set_pins(definitions_key(name, seen=False), {n: current[n] for n in accepted if n in current})
    await deps.store.set_pins(changed_key(name), dict.fromkeys(accepted, ""))
    deps.content.note_changed(name, dict.fromkeys(accepted, ""))
    log.warning("tools_pinned", tool=name, actor=who.sub, names=sorted(accepted))
    return json_response({"tool": name, "pins": await deps.store.tool_pins(name)})
