"""agent: the guard.client quick start (written by `guard init`). Run it from this folder: python agent.py"""

import asyncio
import subprocess

from guard.client import Guard

TOKEN = subprocess.check_output(  # the agent's IdP token; here from guard's development issuer
    ["guard", "dev-token", "--config", "guard.yaml", "--sub", "spiffe://example/agent/assistant"], text=True).strip()


async def main() -> None:
    async with Guard("{{GUARD_URL}}", token=TOKEN) as guard, \
            guard.task(purpose="tidy my notes", tools=["notes", "summarize"], step_up="wait") as t:
        note = await t.call("notes", "write", title="hello", body="my first note")  # allowed
        print("wrote:", note)
        print("summary:", await t.call("summarize", "run"))  # chained: summarize -> notes, through guard
        await t.call("notes", "delete", id=note["id"])  # step-up: waits until the approver says yes
        print("deleted note", note["id"], "after approval")


asyncio.run(main())
