"""Which tool and action a call is, and its JSON arguments."""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

from guard.canonical import strict_loads
from guard.domain import Action, ToolCall
from guard.errors import BadRequest, UnknownAction, UnknownTool
from guard.policy import PolicySet, ToolSpec

__all__ = ["check_tool_path", "match_action", "resolve_tool"]

_BAD_ESCAPES = re.compile(r"%(2[eEfF]|5[cC]|00)")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def check_tool_path(raw_path: str) -> str:
    """Refuse paths that could reach an upstream path no action maps: dot segments, empty
    segments, backslashes and encoded `.`, `/`, `\\` or NUL, malformed or double escapes,
    invalid (e.g. overlong) UTF-8, and characters a tool could normalize (NFKC) into a dot
    segment or a separator. Returns the path unchanged."""
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    if _BAD_ESCAPES.search(raw_path) or "\\" in raw_path or _MALFORMED_ESCAPE.search(raw_path):
        raise BadRequest("encoded '.', '/', '\\' or NUL, or a malformed escape, in the tool path")
    segments = raw_path.split("/")[1:]
    if any(s in (".", "..") for s in segments) or any(s == "" for s in segments[:-1]):
        raise BadRequest("dot or empty segments in the tool path")
    if "%" in raw_path or not raw_path.isascii():
        _check_decoded(raw_path)
    return raw_path


def _check_decoded(raw_path: str) -> None:
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeError:  # overlong or truncated sequences, lone surrogates
        raise BadRequest("the tool path is not valid UTF-8") from None
    if _BAD_ESCAPES.search(decoded) or "%u" in decoded.lower():
        raise BadRequest("double-encoded characters in the tool path")
    norm = unicodedata.normalize("NFKC", decoded)
    if norm.count("/") != decoded.count("/") or "\\" in norm or any(s in (".", "..") for s in norm.split("/")):
        raise BadRequest("characters in the tool path that normalize to a separator or dot segment")


def resolve_tool(call: ToolCall, policies: PolicySet) -> ToolSpec:
    tool = policies.tools.get(call.tool)
    if tool is None or tool.kind != call.kind:
        raise UnknownTool(f"no {call.kind} tool named {call.tool!r}")
    return tool


def _query_args(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k in out:
            prev = out[k]
            out[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
        else:
            out[k] = v
    return out


def _json_body(call: ToolCall) -> Any:
    if not call.body:
        return None
    ctype = call.content_type.split(";", 1)[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        return None
    try:
        return strict_loads(call.body)
    except (ValueError, UnicodeDecodeError) as e:  # ValueError: also duplicate keys, NaN
        raise BadRequest("malformed JSON body (or duplicate keys, NaN, Infinity)", call_id=call.call_id) from e


def match_action(call: ToolCall, tool: ToolSpec) -> Action:
    """http: method + path template; mcp: the tools/call name. Arguments: the JSON body, query
    string and path variables merged; a name given twice with different values is refused."""
    if call.kind == "mcp":
        name = call.mcp_action or ""
        mcp_args = call.mcp_args if call.mcp_args is not None else {}
        return Action(tool.name, name, mcp_args)
    body = _json_body(call)
    found = tool.match_action(call.method, call.path)
    if found is None:
        raise UnknownAction(f"{call.method} {call.path} matches no action of {tool.name}")
    name, path_vars = found
    sources: list[dict[str, Any]] = [
        body if isinstance(body, dict) else ({} if body is None else {"body": body}),
        _query_args(call.query),
        {k: unquote(v) for k, v in path_vars.items()},
    ]
    args: dict[str, Any] = {}
    for source in sources:
        for key, value in source.items():
            if key in args and args[key] != value:
                # the guard and the tool could read different values: refuse, never guess
                raise BadRequest(f"argument {key!r} is given twice with different values", call_id=call.call_id)
            args[key] = value
    return Action(tool.name, name, args)
