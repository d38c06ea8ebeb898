"""The step-up demo: a billing agent pays a small amount (allowed), then a large one that needs
a finance approver. It holds the call with `Prefer: wait=30` while the approver (examples/approver.py,
here in `--auto approve` mode) receives the signed webhook and approves; guard then forwards it.

    python -m examples.billing_agent --config examples/guard.yaml
"""

from __future__ import annotations

from examples.agent import ALLOWED, CREATED, Demo, Expect, run_agent

BILLING = "spiffe://acme/agent/billing"
APPROVAL_REQUIRED = Expect(403, "approval_required")


async def run(demo: Demo, agent_token: str, config: str | None) -> None:
    task = await demo.open_task(agent_token, purpose="pay the monthly invoices", requested_by="bob@acme.example",
                                max_calls=10)
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


def main() -> None:
    run_agent("guard's step-up demo agent", run, agent=BILLING, timeout_s=60)


if __name__ == "__main__":
    main()
