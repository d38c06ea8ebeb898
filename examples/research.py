"""research: a tool that calls other tools through guard while serving a call (a chain).

    python -m examples.research --port 9104 --guard-url http://127.0.0.1:8080

Endpoints (actions of tool "research"):
    POST /research      run  {topic}: writes a summary note through guard (research -> notes)
    POST /research/pay  pay  {topic}: tries to buy a report (research -> payments; policy refuses)

A chained call presents the ``Txn-Token`` this tool received, and nothing else: no task
token, no Authorization. guard treats it as a call of the same task, made by the same
agent, with ``chain.caller = research``, and evaluates it against the policy like any
other call. The Txn-Token only works while the call that brought it is still in flight.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from examples.toolkit import GUARD_CLIENT, parse_args, run, tool_app

__all__ = ["make_app"]

GUARD_URL = web.AppKey("guard_url", str)


async def chained_call(request: web.Request, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Call ``{guard}/tools/<path>`` on behalf of the task that sent ``request``.

    Returns what happened: the status, the guard's problem ``code`` if it refused, and
    the tool's answer if it did not.
    """
    url = request.app[GUARD_URL].rstrip("/") + path
    # the guard client forwards this request's Txn-Token by itself (guard.tool.aiohttp.txn_token_middleware)
    async with request.app[GUARD_CLIENT].request(method, url, json=body) as resp:
        try:
            answer: Any = await resp.json(content_type=None)  # None for an empty body
        except ValueError:
            answer = await resp.text()
    result: dict[str, Any] = {"call": f"{method} {path}", "status": resp.status, "code": None}
    if resp.status >= 400 and isinstance(answer, dict):
        result["code"] = answer.get("code")  # problem details from guard (or the tool's own error)
        result["rule_id"] = answer.get("rule_id")
    else:
        result["answer"] = answer
    return result


async def _topic(request: web.Request) -> str | None:
    try:
        data = await request.json()
    except ValueError:
        return None
    topic = data.get("topic") if isinstance(data, dict) else None
    return topic if isinstance(topic, str) and topic else None


async def research(request: web.Request) -> web.Response:
    topic = await _topic(request)
    if topic is None:
        return web.json_response({"error": "bad_request", "detail": "topic must be a string"}, status=400)

    # The "research" itself is left as an exercise; saving the result is the interesting part.
    summary = f"Summary of {topic}: three sources agree, one disagrees; see the task's audit trail."
    note = {"title": f"Research: {topic}", "body": summary, "tags": ["research"]}
    saved = await chained_call(request, "POST", "/tools/notes/notes", note)

    return web.json_response({"topic": topic, "summary": summary, "chained": [saved]})


async def research_pay(request: web.Request) -> web.Response:
    topic = await _topic(request) or "market report"
    payment = {"amount": 5, "currency": "EUR", "to": "reports-r-us", "memo": f"report on {topic}"}
    paid = await chained_call(request, "POST", "/tools/payments/payments", payment)
    # Pass the refusal on as data: this endpoint's own call succeeded.
    return web.json_response({"topic": topic, "status": paid["status"], "code": paid["code"], "chained": [paid]})


def make_app(guard_url: str) -> web.Application:
    app = tool_app("research", guard_url)
    app[GUARD_URL] = guard_url
    app.router.add_post("/research", research)
    app.router.add_post("/research/pay", research_pay)
    return app


def main() -> None:
    args = parse_args("research: an example tool that makes chained calls through guard", default_port=9104)
    run(make_app(args.guard_url), args.port)


if __name__ == "__main__":
    main()
