"""tools/list filtering: small incremental rewriters that leave only the tools a task could be
allowed to call, in a JSON answer or an event stream; what cannot be read is replaced by an
error, never passed unfiltered."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from guard.mcp.rpc import INTERNAL_ERROR, JsonId, error_body

__all__ = ["JsonToolsFilter", "SseToolsFilter", "Visible", "filter_tools_result", "tools_filter"]

_MAX_FILTERED_BYTES = 16 * 1024 * 1024


Visible = Callable[[str], bool]
Keep = Callable[[dict[str, Any]], bool]  # a whole definition kept (tool pinning, guard.content.pins)


def filter_tools_result(message: Any, rpc_id: JsonId, visible: Visible, keep: Keep | None = None) -> Any | None:
    """The JSON-RPC response to tools/list `rpc_id` with only the visible tools (nextCursor and
    everything else kept), or None when `message` is not that response."""
    if not isinstance(message, dict) or message.get("id") != rpc_id or "result" not in message:
        return None
    result = message["result"]
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return None
    tools = [t for t in result["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str)
             and visible(t["name"]) and (keep is None or keep(t))]
    return {**message, "result": {**result, "tools": tools}}


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class JsonToolsFilter:
    """Rewrites an `application/json` tools/list answer: buffered (it is one object), filtered,
    emitted at the end. An answer that cannot be read is replaced by an error (fail closed)."""

    def __init__(self, rpc_id: JsonId, visible: Visible, unreadable: bool = False, keep: Keep | None = None) -> None:
        self.rpc_id = rpc_id
        self.visible = visible
        self.keep = keep
        self.chunks: list[bytes] = []
        self.size = _MAX_FILTERED_BYTES + 1 if unreadable else 0

    def feed(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size <= _MAX_FILTERED_BYTES:
            self.chunks.append(chunk)
        return b""

    def close(self) -> bytes:
        try:
            if self.size > _MAX_FILTERED_BYTES:
                raise ValueError("too large")
            message = json.loads(b"".join(self.chunks))
        except (ValueError, UnicodeDecodeError):
            return error_body(self.rpc_id, INTERNAL_ERROR, "guard could not read the tools/list answer")
        if isinstance(message, dict) and "error" in message:
            return _dump(message)
        filtered = filter_tools_result(message, self.rpc_id, self.visible, self.keep)
        if filtered is None:
            return error_body(self.rpc_id, INTERNAL_ERROR, "guard could not read the tools/list answer")
        return _dump(filtered)


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SseToolsFilter:
    """Rewrites a `text/event-stream` answer event by event: the event carrying the tools/list
    response is filtered, every other event (progress, logs, pings) passes through unchanged."""

    def __init__(self, rpc_id: JsonId, visible: Visible, keep: Keep | None = None) -> None:
        self.rpc_id = rpc_id
        self.visible = visible
        self.keep = keep
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        out: list[bytes] = []
        while (m := _EVENT_END.search(self.pending)) is not None:
            event, self.pending = self.pending[: m.start()], self.pending[m.end():]
            out.append(self._event(event) + m.group(0))
        if len(self.pending) > _MAX_FILTERED_BYTES:  # one event this big: refuse to pass it unread
            self.pending = b""
            out.append(b"data: " + error_body(self.rpc_id, INTERNAL_ERROR, "event too large") + b"\n\n")
        return b"".join(out)

    def close(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._event(rest) if rest.strip() else rest

    def _event(self, event: bytes) -> bytes:
        lines = re.split(rb"\r\n|\n|\r", event)
        data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
        if not data:
            return event
        try:
            message = json.loads(b"\n".join(data))
        except (ValueError, UnicodeDecodeError):
            return event
        filtered = filter_tools_result(message, self.rpc_id, self.visible, self.keep)
        if filtered is None:
            return event
        kept = [ln for ln in lines if not ln.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + _dump(filtered)])


def tools_filter(
    content_type: str, content_encoding: str, rpc_id: JsonId, visible: Visible, keep: Keep | None = None
) -> JsonToolsFilter | SseToolsFilter:
    """The rewriter for a tools/list answer. Anything but an uncompressed event stream is read as
    one JSON-RPC message; what cannot be read is replaced by an error, never passed unfiltered."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "text/event-stream" and content_encoding.strip().lower() in ("", "identity"):
        return SseToolsFilter(rpc_id, visible, keep)
    if content_encoding.strip().lower() not in ("", "identity"):
        return JsonToolsFilter(rpc_id, lambda _name: False, unreadable=True)
    return JsonToolsFilter(rpc_id, visible, keep=keep)
