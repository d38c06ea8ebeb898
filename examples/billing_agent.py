"""The step-up demo: a billing agent pays a small amount (allowed), then a large one that needs
a finance approver. It holds the call with `Prefer: wait=30` while the approver (examples/approver.py,
here in `--auto approve` mode) receives the signed webhook and approves; guard then forwards it.

    python -m examples.billing_agent --config examples/guard.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp

from examples.agent import ALLOWED, CREATED, Demo, Expect, dev_token

BILLING = "spiffe://acme/agent/billing"
APPROVAL_REQUIRED = Expect(403, "approval_required")


async def run(demo: Demo, agent_token: str) -> None:
    task_request = {"purpose": "pay the monthly invoices", "requested_by": "bob@acme.example", "max_calls": 10}
    status, task = await demo.request("POST", "/v1/tasks", agent_token, task_request)
    if status != 201:
        raise SystemExit(f"could not create a task: {status} {task}")
    demo.task_token = task["task_token"]
    print(f"task {task['task_id']} for {task['agent']}\n")

    # 1. 40 EUR: within what billing may pay on its own (rule small-payments-allowed).
    await demo.call("POST", "/tools/payments/payments", CREATED, ALLOWED,
                    json={"amount": 40, "currency": "EUR", "to": "ACME Supplies", "memo": "paper"})

    # 2. 2,500 EUR without waiting: guard answers approval_required and notifies finance.
    big = {"amount": 2500, "currency": "EUR", "to": "Contoso Ltd", "memo": "annual licence"}
    _, problem = await demo.call("POST", "/tools/payments/payments", APPROVAL_REQUIRED, json=big)
    approval_id = problem.get("approval_id") if isinstance(problem, dict) else None
    print(f"{'':<22} approval {approval_id} sent to the finance webhook")

    # 3. The identical call again, held with Prefer: wait=30 until the approver decides.
    headers = {"Authorization": f"Bearer {demo.task_token}", "Prefer": "wait=30"}
    async with demo.http.post(f"{demo.guard_url}/tools/payments/payments", json=big, headers=headers) as r:
        body = await r.json(content_type=None)
        print(f"{'[held, then ' + ('allow]' if r.status < 400 else str(body.get('code')) + ']'):<22} "
              f"POST   /tools/payments/payments       -> {r.status}")
        demo.check("the approved payment should be forwarded", r.status in (200, 201))

    # 4. The approval was consumed by that one call: the same call again needs a new one.
    await demo.call("POST", "/tools/payments/payments", APPROVAL_REQUIRED, json=big)


async def main_async(args: argparse.Namespace) -> int:
    token = await dev_token(BILLING, config=args.config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        demo = Demo(http, args.guard_url)
        await run(demo, token)
    print("\nevery call got the expected answer" if not demo.surprises else f"\n{demo.surprises} surprise(s)")
    return 0 if not demo.surprises else 1


def main() -> None:
    parser = argparse.ArgumentParser(description="guard's step-up demo agent")
    parser.add_argument("--guard-url", default="http://127.0.0.1:8080")
    parser.add_argument("--config", default=None)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
