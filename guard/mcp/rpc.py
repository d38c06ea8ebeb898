"""JSON-RPC parsing, header/body agreement and tools/list filtering for MCP tools.

Pure functions and small incremental body rewriters: nothing here touches the network.
The guard decides on the JSON-RPC body, never on the `Mcp-Method`/`Mcp-Name` headers; a
header that disagrees with the body is refused (-32020) so the upstream cannot be told a
different story than the one the guard checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from guard.canonical import strict_loads

__all__ = [
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "NAME_BEARING_METHODS",
    "PARSE_ERROR",
    "REFUSED",
    "JsonToolsFilter",
    "RpcError",
    "RpcMessage",
    "SseToolsFilter",
    "check_routing_headers",
    "decode_header_value",
    "error_body",
    "filter_tools_result",
    "header_values",
    "parse_message",
    "tools_filter",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
REFUSED = -32001  # guard: the call was refused by policy; data = problem details

# Method -> params key mirrored in the Mcp-Name header (MCP 2026-07-28).
NAME_BEARING_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")
_MAX_FILTERED_BYTES = 16 * 1024 * 1024

JsonId = str | int | float | None


class RpcError(Exception):
    """A JSON-RPC error the guard answers itself; nothing is forwarded."""

    def __init__(self, code: int, message: str, rpc_id: JsonId = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rpc_id = rpc_id
        self.data = data

    @property
    def http_status(self) -> int:
        """The HTTP status the streamable HTTP transport uses for this code."""
        return 400 if self.code in (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, HEADER_MISMATCH) else 200

    def body(self) -> bytes:
        return error_body(self.rpc_id, self.code, self.message, self.data)


@dataclass(frozen=True, slots=True)
class RpcMessage:
    """One JSON-RPC message a client POSTed: a request, a notification or a response."""

    kind: str  # "request" | "notification" | "response"
    rpc_id: JsonId
    method: str | None  # None for a response
    params: dict[str, Any]

    @property
    def label(self) -> str:
        """What the audit calls it: the method, or "response" for a client's answer."""
        return self.method or "response"

    def param_str(self, key: str) -> str | None:
        value = self.params.get(key)
        return value if isinstance(value, str) else None


def error_body(rpc_id: JsonId, code: int, message: str, data: Any = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "error": err}, separators=(",", ":")).encode()


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def parse_message(body: bytes) -> RpcMessage:
    """Parse one JSON-RPC 2.0 message. Batches are refused: MCP 2025-06-18 and later (all the
    revisions guard speaks, 2025-11-25 and 2026-07-28) removed JSON-RPC batching."""
    try:
        data = strict_loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RpcError(PARSE_ERROR, "Parse error: the body is not JSON (or has duplicate keys, NaN)") from None
    if isinstance(data, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 object")
    rpc_id = data.get("id")
    if not _valid_id(rpc_id):
        raise RpcError(INVALID_REQUEST, "Invalid Request: bad id")
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: params must be an object", rpc_id)
    method = data.get("method")
    if method is None:
        if "id" not in data or ("result" in data) == ("error" in data):
            raise RpcError(INVALID_REQUEST, "Invalid Request: no method", rpc_id)
        return RpcMessage("response", rpc_id, None, {})
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a string", rpc_id)
    return RpcMessage("request" if "id" in data else "notification", rpc_id, method, params)


def decode_header_value(value: str) -> str | None:
    """An `Mcp-Name` value: verbatim, or the UTF-8 inside a `=?base64?…?=` sentinel.
    A malformed sentinel is None, so it never agrees with anything."""
    m = _B64_SENTINEL.fullmatch(value)
    if m is None:
        return value
    payload = m.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_routing_headers(msg: RpcMessage, method_values: list[str], name_values: list[str]) -> None:
    """Refuse (-32020) `Mcp-Method`/`Mcp-Name` headers that are repeated or disagree with the
    body. Absent headers are fine: the body is what the guard decides on."""
    if len(method_values) > 1 or len(name_values) > 1:
        raise RpcError(HEADER_MISMATCH, "Header mismatch: Mcp-Method or Mcp-Name repeated", msg.rpc_id)
    if method_values and method_values[0] != msg.method:
        raise RpcError(HEADER_MISMATCH, "Header mismatch: Mcp-Method does not match the body's method", msg.rpc_id)
    if not name_values:
        return
    key = NAME_BEARING_METHODS.get(msg.method or "")
    body_value = msg.param_str(key) if key is not None else None
    if body_value is None or decode_header_value(name_values[0]) != body_value:
        raise RpcError(HEADER_MISMATCH, "Header mismatch: Mcp-Name does not match the body", msg.rpc_id)


# ---------------------------------------------------------------------------------------------
# tools/list filtering


Visible = Callable[[str], bool]


def filter_tools_result(message: Any, rpc_id: JsonId, visible: Visible) -> Any | None:
    """The JSON-RPC response to tools/list `rpc_id` with only the visible tools (nextCursor and
    everything else kept), or None when `message` is not that response."""
    if not isinstance(message, dict) or message.get("id") != rpc_id or "result" not in message:
        return None
    result = message["result"]
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return None
    tools = [t for t in result["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str)
             and visible(t["name"])]
    return {**message, "result": {**result, "tools": tools}}


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class JsonToolsFilter:
    """Rewrites an `application/json` tools/list answer: buffered (it is one object), filtered,
    emitted at the end. An answer that cannot be read is replaced by an error (fail closed)."""

    def __init__(self, rpc_id: JsonId, visible: Visible, unreadable: bool = False) -> None:
        self.rpc_id = rpc_id
        self.visible = visible
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
        filtered = filter_tools_result(message, self.rpc_id, self.visible)
        if filtered is None:
            return error_body(self.rpc_id, INTERNAL_ERROR, "guard could not read the tools/list answer")
        return _dump(filtered)


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SseToolsFilter:
    """Rewrites a `text/event-stream` answer event by event: the event carrying the tools/list
    response is filtered, every other event (progress, logs, pings) passes through unchanged."""

    def __init__(self, rpc_id: JsonId, visible: Visible) -> None:
        self.rpc_id = rpc_id
        self.visible = visible
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
        filtered = filter_tools_result(message, self.rpc_id, self.visible)
        if filtered is None:
            return event
        kept = [ln for ln in lines if not ln.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + _dump(filtered)])


def tools_filter(
    content_type: str, content_encoding: str, rpc_id: JsonId, visible: Visible
) -> JsonToolsFilter | SseToolsFilter:
    """The rewriter for a tools/list answer. Anything but an uncompressed event stream is read as
    one JSON-RPC message; what cannot be read is replaced by an error, never passed unfiltered."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "text/event-stream" and content_encoding.strip().lower() in ("", "identity"):
        return SseToolsFilter(rpc_id, visible)
    if content_encoding.strip().lower() not in ("", "identity"):
        return JsonToolsFilter(rpc_id, lambda _name: False, unreadable=True)
    return JsonToolsFilter(rpc_id, visible)


def header_values(items: Iterable[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in items if k.lower() == lname]
