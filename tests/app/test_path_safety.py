"""Path safety and JSON that parsers disagree on, in process: each trick is refused with a clear
4xx, nothing is forwarded or counted, the credential stays unconsumed, the trail verifies."""

from __future__ import annotations

from tests.support.app import AppGuard
from tests.support.client import bearer
from tests.support.world import World as AnyWorld
from tests.support.world import assert_untouched, problem_of, raw, raw_problem, status_of

World = AnyWorld[AppGuard]


async def test_path_normalization_tricks_never_reach_an_unmapped_path(hostile: World) -> None:
    w = hostile
    tricks = [
        "/tools/echo/items/%252e%252e/pay", "/tools/echo/items/%25252e%25252e/pay",
        "/tools/echo/items/%u002e%u002e/pay",
        "/tools/echo/items/%E2%80%A5/pay", "/tools/echo/items/%EF%BC%8E%EF%BC%8E/pay",
        "/tools/echo/items/%C0%AE%C0%AE/pay", "/tools/echo/items/%E0%80%AE%E0%80%AE/pay",
        "/tools/echo/items/..;/pay", "/tools/echo/items;/../pay", "/tools/echo/items/1;/../../pay",
        "/tools/echo/items\\..\\pay", "/tools/echo/items/%5c..%5cpay", "/tools/echo/items/..%5cpay",
        "/tools/echo/items/..%c0%afpay", "/tools/echo/items/1%00/../../pay", "/tools/echo/%2e%2e/echo/pay",
        "/tools/echo/items/1/%2e%2e/%2e%2e/pay", "/tools/echo/items/1/..%2f..%2fpay", "/tools/echo/ITEMS/../pay",
        "/tools/echo/./pay", "/tools/echo/items/%2E%2E%2Fpay", "http://127.0.0.1/tools/echo/items/../pay",
    ]
    raw_bytes = [b"/tools/echo/items/\xc0\xae\xc0\xae/pay", b"/tools/echo/items/\xe2\x80\xa5/pay",
                 b"/tools/echo/items/\x00/../pay", b"/tools/echo/items/\t../pay"]
    targets = [t.encode() for t in tricks] + raw_bytes
    for target in targets:
        for method in (b"GET", b"POST"):
            data = (method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {w.task['task_token']}\r\n".encode()
                    + b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            response = await raw(w.guard.port, data)
            assert status_of(response) in (400, 403, 404), (target, response[:300])
            raw_problem(response, target)
    await assert_untouched(w)


async def test_json_that_parsers_disagree_on_is_refused(hostile: World) -> None:
    """Duplicate keys (the guard and a tool may each keep a different one) and NaN/Infinity
    never reach a tool: the guard would decide on one value and the tool act on another."""
    w = hostile
    h = {**bearer(w.task["task_token"]), "Content-Type": "application/json"}
    for body in (b'{"amount": 50000, "amount": 5}', b'{"amount": NaN}', b'{"amount": -Infinity}',
                 b'{"x": {"a": 1, "a": 2}, "amount": 5}'):
        async with w.http.post(f"{w.url}/tools/echo/pay", data=body, headers=h) as r:
            assert r.status == 400 and (await problem_of(r))["code"] == "bad_request", body
    mcp_headers = {**h, "Accept": "application/json, text/event-stream"}
    for body in (b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                 b'"params":{"name":"delete_everything","name":"read_file","arguments":{}}}',
                 b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
                 b'"params":{"name":"delete_everything","arguments":{}}}'):
        async with w.http.post(f"{w.url}/mcp/files", data=body, headers=mcp_headers) as r:
            answer = await r.json(content_type=None)
            assert r.status >= 400 or "error" in answer, answer
    await assert_untouched(w)
