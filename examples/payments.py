"""payments: an in-memory payments service behind guard, where a mistake costs money.

    python -m examples.payments --port 9102 --guard-url http://127.0.0.1:8080

Endpoints (actions of tool "payments" in policies/tools.yaml):
    POST /payments        pay     {amount, currency, to, memo}
    GET  /payments/{id}   lookup
    POST /refunds         refund  {payment_id, amount?}

The policy, not this service, decides who may pay how much: payments over 100 wait
for a human approver (step-up) before guard forwards them. This service only has to
check that each request carries a live guard credential minted for it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from examples.toolkit import parse_args, run, tool_app
from guard.tool.aiohttp import credential

__all__ = ["Ledger", "Payment", "make_app"]

CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass
class Payment:
    id: str
    amount: float
    currency: str
    to: str
    memo: str
    agent: str
    task_id: str
    refunded: float = 0.0


@dataclass
class Ledger:
    payments: dict[str, Payment] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


LEDGER = web.AppKey("ledger", Ledger)


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        data = await request.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _positive_amount(value: object) -> float | None:
    # bool is an int in Python; True is not a payment amount.
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


async def pay(request: web.Request) -> web.Response:
    data = await _json_object(request)
    if data is None:
        return _error(400, "bad_request", "body must be a JSON object")
    amount = _positive_amount(data.get("amount"))
    currency, to, memo = data.get("currency"), data.get("to"), data.get("memo", "")
    if amount is None:
        return _error(400, "bad_request", "amount must be a positive number")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        return _error(400, "bad_request", "currency must be an ISO 4217 code such as EUR")
    if not isinstance(to, str) or not to:
        return _error(400, "bad_request", "to must name the payee")
    if not isinstance(memo, str):
        return _error(400, "bad_request", "memo must be a string")

    ledger = request.app[LEDGER]
    cred = credential(request)
    payment = Payment(
        id=f"pay_{next(ledger.ids)}",
        amount=amount,
        currency=currency,
        to=to,
        memo=memo,
        agent=cred.agent,
        task_id=cred.task,
    )
    ledger.payments[payment.id] = payment
    return web.json_response({**asdict(payment), "status": "settled"}, status=201)


async def lookup(request: web.Request) -> web.Response:
    payment = request.app[LEDGER].payments.get(request.match_info["id"])
    if payment is None:
        return _error(404, "not_found", "no such payment")
    return web.json_response(asdict(payment))


async def refund(request: web.Request) -> web.Response:
    data = await _json_object(request)
    if data is None:
        return _error(400, "bad_request", "body must be a JSON object")
    payment = request.app[LEDGER].payments.get(str(data.get("payment_id")))
    if payment is None:
        return _error(404, "not_found", "no such payment")
    remaining = payment.amount - payment.refunded
    amount = _positive_amount(data.get("amount", remaining))
    if amount is None or amount > remaining:
        return _error(400, "bad_request", f"refund must be a positive amount up to {remaining}")
    payment.refunded += amount
    return web.json_response(
        {"payment_id": payment.id, "amount": amount, "currency": payment.currency, "status": "refunded"},
        status=201,
    )


def make_app(guard_url: str) -> web.Application:
    app = tool_app("payments", guard_url)
    app[LEDGER] = Ledger()
    app.router.add_post("/payments", pay)
    app.router.add_get("/payments/{id}", lookup)
    app.router.add_post("/refunds", refund)
    return app


def main() -> None:
    args = parse_args("payments: an example tool behind guard", default_port=9102)
    run(make_app(args.guard_url), args.port)


if __name__ == "__main__":
    main()
