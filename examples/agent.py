"""The demo agent: one task, a handful of tool calls through guard, and the audit trail.

Start guard and the example tools first (see examples/README.md), then:

    python -m examples.agent --config examples/guard.yaml

It opens a task for "weekly research report" with a budget of 6 calls and makes calls
that guard should allow, deny, refuse as unknown, chain, and finally stop for lack of
budget. Each line shows what guard answered:

    [allow]                POST   /tools/notes/notes             -> 201
    [denied]               POST   /tools/notes/notes             -> 403 (rule big-notes-denied)

The exit code is 0 when every call got the answer the demo policy predicts, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

__all__ = ["Demo", "Expect", "main", "run_agent"]

RESEARCHER = "spiffe://acme/agent/researcher"
AUDITOR = "security@acme.example"


@dataclass(frozen=True)
class Expect:
    """An answer the demo accepts: an HTTP status and, for a refusal, guard's problem `code`."""

    status: int
    code: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}" if self.code else str(self.status)


ALLOWED = Expect(200)
CREATED = Expect(201)
DENIED = Expect(403, "denied")
UNKNOWN_ACTION = Expect(403, "unknown_action")
BUDGET_EXHAUSTED = Expect(429, "budget_exhausted")


async def dev_token(sub: str, *roles: str, config: str | None = None) -> str:
    """Mint a token from guard's development issuer: ``python -m guard dev-token``."""
    cmd = [sys.executable, "-m", "guard", "dev-token", "--sub", sub]
    for role in roles:
        cmd += ["--role", role]
    env = dict(os.environ)
    if config:
        env["GUARD_CONFIG"] = config  # the CLI finds its config (and the dev key) through this
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"guard dev-token failed: {err.decode().strip()}")
    return out.decode().strip()


def _when(value: Any) -> str:
    """A timestamp for people: unix seconds become ISO 8601 UTC; anything else as is."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return str(value)


def _code(body: Any) -> str | None:
    return body.get("code") if isinstance(body, dict) else None


class Demo:
    """Makes calls with one task token, prints one line per call, counts surprises."""

    def __init__(self, http: aiohttp.ClientSession, guard_url: str) -> None:
        self.http = http
        self.guard_url = guard_url.rstrip("/")
        self.task_token = ""
        self.surprises = 0

    async def request(self, method: str, path: str, token: str, json: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.guard_url + path, json=json, headers=headers) as resp:
            try:
                body = await resp.json(content_type=None)  # JSON or problem+json; None when empty
            except ValueError:
                body = await resp.text()
            return resp.status, body

    async def open_task(self, agent_token: str, **request: Any) -> dict[str, Any]:
        """Open a task; its token is what every call presents from now on."""
        status, task = await self.request("POST", "/v1/tasks", agent_token, request)
        if status != 201:
            raise SystemExit(f"could not create a task: {status} {task}")
        self.task_token = task["task_token"]
        return dict(task)

    async def call(self, method: str, path: str, *expect: Expect, json: Any = None) -> tuple[int, Any]:
        """One tool call with the task token; prints it and checks it against `expect`."""
        status, body = await self.request(method, path, self.task_token, json)
        got = Expect(status, _code(body) if status >= 400 else None)
        label = "allow" if status < 400 else got.code or "error"
        line = f"{'[' + label + ']':<22} {method:<6} {path:<30} -> {status}"
        if isinstance(body, dict) and body.get("rule_id"):
            line += f" (rule {body['rule_id']})"
        if got not in expect:
            self.surprises += 1
            line += f"   <-- expected {' or '.join(map(str, expect))}"
            if isinstance(body, dict) and body.get("detail"):
                line += f": {body['detail']}"
        print(line)
        return status, body

    def check(self, what: str, ok: bool) -> None:
        """Count a surprise that is not a call's status."""
        if not ok:
            self.surprises += 1
            print(f"    <-- unexpected: {what}")


async def run_demo(demo: Demo, agent_token: str, config: str | None) -> None:
    # 1. Open a task. Its token is what the agent presents on every call from now on.
    task = await demo.open_task(agent_token, purpose="weekly research report", requested_by="alice@acme.example",
                                max_calls=6)
    task_id = task["task_id"]
    print(f"task {task_id} for {task['agent']}, expires {_when(task['expires_at'])}\n")

    # 2. A note written and read back: both allowed by rule researcher-uses-notes.
    note = {"title": "Sources", "body": "Three papers on agent sandboxing.", "tags": ["research"]}
    _, written = await demo.call("POST", "/tools/notes/notes", CREATED, json=note)
    note_id = written.get("id", "1") if isinstance(written, dict) else "1"
    await demo.call("GET", f"/tools/notes/notes/{note_id}", ALLOWED)

    # 3. A note far too long to be a note: rule big-notes-denied. Nothing reaches the tool.
    dump = {"title": "Export", "body": "customer_id,email,iban\n" * 100, "tags": []}
    await demo.call("POST", "/tools/notes/notes", DENIED, json=dump)

    # 4. A method and path that no action of the notes tool declares.
    await demo.call("PATCH", f"/tools/notes/notes/{note_id}", UNKNOWN_ACTION, json={"title": "Renamed"})

    # 5. research saves a summary note by calling notes through guard, with its Txn-Token.
    status, answer = await demo.call("POST", "/tools/research/research", ALLOWED, json={"topic": "agent sandboxing"})
    chained = answer.get("chained", []) if isinstance(answer, dict) else []
    for step in chained:
        refused = f" {step['code']}" if step.get("code") else ""
        print(f"{'':<22} chained {step['call']} -> {step['status']}{refused}")
    demo.check("research's chained notes write should be 201", [s.get("status") for s in chained] == [201])

    # 6. Keep listing notes until the task's budget of 6 calls runs out.
    for _ in range(10):
        status, _ = await demo.call("GET", "/tools/notes/notes?q=research", ALLOWED, BUDGET_EXHAUSTED)
        if status != 200:
            break
    demo.check("the budget should have run out", status == 429)

    # 7. Done: end the task, so its tokens stop working at once.
    status, _ = await demo.request("POST", f"/v1/tasks/{task_id}/complete", demo.task_token)
    print(f"\ntask completed: {status}")
    demo.check("completing the task", 200 <= status < 300)

    # 8. The audit trail: every decision above, hash-chained. Reading it takes an auditor.
    auditor = await dev_token(AUDITOR, "guard:auditor", config=config)
    status, audit = await demo.request("GET", f"/v1/tasks/{task_id}/audit", auditor)
    print(f"audit trail: GET {demo.guard_url}/v1/tasks/{task_id}/audit  (files under ./var/audit)")
    if status != 200 or not isinstance(audit, dict):
        demo.check(f"reading the audit trail answered {status}", False)
        return
    print(f"audit: {len(audit.get('records', []))} records, verified: {audit.get('verified')}")
    demo.check("the audit chain should verify", audit.get("verified") is True)


Script = Callable[[Demo, str, str | None], Awaitable[None]]  # (demo, the agent's token, guard's config)


def run_agent(description: str, script: Script, agent: str = RESEARCHER, timeout_s: float = 30) -> None:
    """A demo agent's command line (`--guard-url`, `--token`, `--config`): plays `script` against
    guard and exits 0 when every call got the answer the demo policy predicts, 1 otherwise."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--guard-url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", help=f"an IdP token for the agent (default: a dev token for {agent})")
    parser.add_argument("--config", default=None, help="guard config, for dev-token (default: $GUARD_CONFIG)")
    args = parser.parse_args()

    async def play() -> int:
        token = args.token or await dev_token(agent, config=args.config)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            demo = Demo(http, args.guard_url)
            await script(demo, token, args.config)
        print("\nevery call got the expected answer" if not demo.surprises else f"\n{demo.surprises} surprise(s)")
        return 0 if not demo.surprises else 1

    try:
        sys.exit(asyncio.run(play()))
    except aiohttp.ClientError as e:
        sys.exit(f"cannot reach guard: {e}")


def main() -> None:
    run_agent("guard's demo agent", run_demo)


if __name__ == "__main__":
    main()
