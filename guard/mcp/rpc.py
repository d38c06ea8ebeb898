"""JSON-RPC parsing and header/body agreement for MCP tools (pure functions, no network).

The guard decides on the JSON-RPC body, never on the `Mcp-Method`/`Mcp-Name` headers; a
header that disagrees with the body is refused (-32020) so the upstream cannot be told a
different story than the one the guard checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
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
    "RpcError",
    "RpcMessage",
    "check_routing_headers",
    "decode_header_value",
    "error_body",
    "parse_message",
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
