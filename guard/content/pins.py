"""MCP tool pinning: a tool definition's digest, checked against its pin in every tools/list answer.

The store holds, per guard tool, three maps of MCP tool name -> digest: the pins (`<tool>`), the
definitions last seen (`<tool>#seen`, what an admin accepts) and the changed ones (`<tool>#changed`,
empty once settled), so every instance refuses a changed tool's calls with one read."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from guard.audit.log import AuditLog
from guard.canonical import canonical_json, sha256_hex
from guard.domain import Authorized
from guard.log import get_logger
from guard.policy import ToolSpec
from guard.stages.forward import BodyRewriter
from guard.stores.base import ContentStore

__all__ = ["DEFINITION_FIELDS", "PinCheck", "PinnedList", "changed_key", "definition", "definition_digest",
           "definitions_key", "pin_check", "seen_key"]

log = get_logger("guard.pins")
DEFINITION_FIELDS = ("name", "description", "inputSchema", "outputSchema", "annotations")


def definition(tool: dict[str, Any]) -> bytes:
    """The canonical JSON of the definition's fields; absent ones left out."""
    return canonical_json({k: tool[k] for k in DEFINITION_FIELDS if k in tool})


def definition_digest(tool: dict[str, Any]) -> str:
    """sha256 (lowercase hex) over the canonical JSON of the definition's fields; absent ones left out."""
    return sha256_hex(definition(tool))


def seen_key(tool: str) -> str:
    return f"{tool}#seen"


def definitions_key(tool: str, seen: bool) -> str:
    """The definitions themselves (name -> canonical JSON): pinned, or last seen (the review page
    shows a changed one beside its pin)."""
    return f"{tool}#defseen" if seen else f"{tool}#def"


def changed_key(tool: str) -> str:
    return f"{tool}#changed"


class PinCheck:
    """Keeps a tools/list answer's definitions that match their pins (`keep`, synchronous, as the
    answer is rewritten); `settle` then pins the new ones (tofu), records what was seen and what
    changed, and audits each change once (`tool_definition_changed` with both digests)."""

    def __init__(self, store: ContentStore, audit: AuditLog, spec: ToolSpec, auth: Authorized,
                 pins: dict[str, str], seen: dict[str, str], changed: dict[str, str],
                 noted: Callable[[str, dict[str, str]], None] | None = None) -> None:
        self.store, self.audit, self.spec, self.auth, self.noted = store, audit, spec, auth, noted
        self.pins = dict(spec.pins) if spec.pin == "sha256" else pins
        self.seen, self.changed = seen, changed
        self.first: dict[str, str] = {}
        self.seen_now: dict[str, str] = {}
        self.defs_now: dict[str, str] = {}  # name -> canonical JSON of a definition seen anew
        self.changes: dict[str, tuple[str, str]] = {}  # name -> (pinned, current)
        self.cleared: dict[str, str] = {}

    def keep(self, tool: dict[str, Any]) -> bool:
        name = tool.get("name")
        if not isinstance(name, str):
            return False
        text = definition(tool)
        digest = sha256_hex(text)
        if self.seen.get(name) != digest:
            self.seen_now[name] = digest
            self.defs_now[name] = text.decode("utf-8")
        pinned = self.pins.get(name)
        if pinned is None:
            if self.spec.pin == "sha256":  # the policy names every tool it trusts
                return False
            self.first[name] = digest
            return True
        if hmac.compare_digest(pinned, digest):
            if self.changed.get(name):
                self.cleared[name] = ""  # back to its pinned definition
            return True
        if self.changed.get(name) != digest:
            self.changes[name] = (pinned, digest)
        return False

    async def settle(self) -> None:
        tool, auth = self.spec.name, self.auth
        first, self.first = self.first, {}
        defs, self.defs_now = self.defs_now, {}
        if defs:
            await self.store.set_pins(definitions_key(tool, seen=True), defs)
        if first:
            held = await self.store.pin_first(tool, first)
            for name, digest in first.items():  # another instance pinned another definition first
                if held.get(name) != digest:
                    self.changes[name] = (held[name], digest)
            mine = {n: defs[n] for n, d in first.items() if held.get(n) == d and n in defs}
            if mine:
                await self.store.set_pins(definitions_key(tool, seen=False), mine)
        seen_now, self.seen_now = self.seen_now, {}
        if seen_now:
            await self.store.set_pins(seen_key(tool), seen_now)
            self.seen.update(seen_now)
        changes, self.changes = self.changes, {}
        cleared, self.cleared = self.cleared, {}
        if changes or cleared:
            update = {**cleared, **{n: cur for n, (_, cur) in changes.items()}}
            await self.store.set_pins(changed_key(tool), update)
            if self.noted is not None:  # this instance refuses the changed tool's calls at once
                self.noted(tool, update)
        for name, (pinned, current) in changes.items():
            self.changed[name] = current
            await self.audit.append(auth.caller.task_id, "tool_definition_changed", auth.caller.agent,
                                    call_id=auth.call.call_id, tool=tool, action=name,
                                    detail={"name": name, "pinned": pinned, "current": current})
            log.warning("tool_definition_changed", tool=tool, name=name, pinned=pinned, current=current)


async def pin_check(store: ContentStore, audit: AuditLog, spec: ToolSpec | None, auth: Authorized,
                    noted: Callable[[str, dict[str, str]], None] | None) -> PinCheck | None:
    """For MCP tools/list of a pinned tool: its pins, read before forwarding (None: not pinned)."""
    if spec is None or spec.pin == "off":
        return None
    return PinCheck(store, audit, spec, auth, await store.tool_pins(spec.name),
                    await store.tool_pins(seen_key(spec.name)), await store.tool_pins(changed_key(spec.name)), noted)


class PinnedList:
    """A tools/list rewriter whose pin changes are settled (stored, audited) before bytes go out."""

    def __init__(self, inner: BodyRewriter, check: PinCheck) -> None:
        self.inner, self.check = inner, check

    def feed(self, chunk: bytes) -> bytes:
        return self.inner.feed(chunk)

    def close(self) -> bytes:
        return self.inner.close()

    async def settle(self) -> None:
        await self.check.settle()
