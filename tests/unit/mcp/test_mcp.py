"""guard/mcp/rpc.py: JSON-RPC parsing, header/body agreement and the tools/list rewriters."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from guard.mcp.rpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    RpcError,
    check_routing_headers,
    parse_message,
)
from guard.mcp.tools_list import tools_filter


def msg(**fields: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **fields}).encode()


@pytest.mark.parametrize(("body", "code"), [
    (b"{", PARSE_ERROR),
    (b"\xff\xfe", PARSE_ERROR),
    (b"[]", INVALID_REQUEST),
    (b"[" + msg(id=1, method="ping") + b"]", INVALID_REQUEST),
    (b'{"id": 1, "method": "ping"}', INVALID_REQUEST),
    (msg(id=[1], method="ping"), INVALID_REQUEST),
    (msg(id=1, method=5), INVALID_REQUEST),
    (msg(id=1, method="ping", params=[1]), INVALID_REQUEST),
    (msg(id=1), INVALID_REQUEST),
])
def test_bad_messages_are_json_rpc_errors(body: bytes, code: int) -> None:
    with pytest.raises(RpcError) as err:
        parse_message(body)
    assert err.value.code == code
    assert err.value.http_status == 400
    assert json.loads(err.value.body())["error"]["code"] == code


def test_message_kinds() -> None:
    assert parse_message(msg(id=1, method="tools/list")).kind == "request"
    assert parse_message(msg(method="notifications/initialized")).kind == "notification"
    response = parse_message(msg(id="s-1", result={}))
    assert response.kind == "response" and response.label == "response"


def test_routing_headers_must_agree_with_the_body() -> None:
    call = parse_message(msg(id=1, method="tools/call", params={"name": "lire_le_fichier_é"}))
    check_routing_headers(call, [], [])
    encoded = "=?base64?" + base64.b64encode("lire_le_fichier_é".encode()).decode() + "?="
    check_routing_headers(call, ["tools/call"], [encoded])
    for method_values, name_values in [(["tools/list"], []), (["tools/call"], ["other"]),
                                       (["tools/call", "tools/call"], []), ([], ["=?base64?!!?="])]:
        with pytest.raises(RpcError) as err:
            check_routing_headers(call, method_values, name_values)
        assert err.value.code == HEADER_MISMATCH and err.value.rpc_id == 1
    ping = parse_message(msg(id=2, method="ping"))
    with pytest.raises(RpcError):
        check_routing_headers(ping, ["ping"], ["anything"])  # a name for a method that has none


TOOLS = {"jsonrpc": "2.0", "id": 9, "result": {"tools": [{"name": "a"}, {"name": "b"}], "nextCursor": "c2"}}


def visible(name: str) -> bool:
    return name == "a"


def test_json_answer_is_filtered_and_unreadable_answers_fail_closed() -> None:
    rw = tools_filter("application/json", "", 9, visible)
    raw = json.dumps(TOOLS).encode()
    assert rw.feed(raw[:10]) == b"" and rw.feed(raw[10:]) == b""
    out = json.loads(rw.close())
    assert out["result"] == {"tools": [{"name": "a"}], "nextCursor": "c2"}
    for ctype, encoding, body in [("application/json", "", b"<html>"), ("application/json", "gzip", raw),
                                  ("text/event-stream", "gzip", raw)]:
        rw = tools_filter(ctype, encoding, 9, visible)
        rw.feed(body)
        assert json.loads(rw.close())["error"]["code"] == INTERNAL_ERROR


def test_sse_answer_is_filtered_event_by_event_across_chunks() -> None:
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    stream = (f"id: 1\r\ndata: {json.dumps(progress)}\r\n\r\n: keepalive\r\n\r\n"
              f"event: message\r\nid: 2\r\ndata: {json.dumps(TOOLS)}\r\n\r\n").encode()
    rw = tools_filter("text/event-stream; charset=utf-8", "", 9, visible)
    out = b"".join(rw.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + rw.close()
    text = out.decode()
    assert text.startswith(f"id: 1\r\ndata: {json.dumps(progress)}\r\n\r\n: keepalive\r\n\r\n")
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    assert json.loads(last[6:])["result"]["tools"] == [{"name": "a"}]
    assert "event: message" in text and "id: 2" in text


def test_other_responses_in_a_stream_pass_untouched() -> None:
    other = {"jsonrpc": "2.0", "id": 8, "result": {"tools": [{"name": "b"}]}}  # not our request id
    event = f"data: {json.dumps(other)}\n\n".encode()
    rw = tools_filter("text/event-stream", "", 9, visible)
    assert rw.feed(event) + rw.close() == event
