"""guard.client: the agent side of guard.

    from guard.client import Guard

    async with Guard("http://127.0.0.1:8080", token=agent_token) as guard:
        async with guard.task(purpose="weekly report", tools=["notes"]) as t:
            note = await t.call("notes", "read", id=7)

`SyncGuard` is the same without an event loop. Errors are guard's own (guard/errors.py):
`ApprovalRequired` (with `approval_id`), `Denied`, `TaskInactive`, … all `GuardError`s; a tool's
own error answer is a `ToolError`. See docs/sdk.md.
"""

from guard.client.aio import Approval, Guard, Progress, Task, TokenSource
from guard.client.dpop import DpopKey
from guard.client.errors import ApprovalDenied, ApprovalRequired, GuardError, ToolError, from_problem
from guard.client.sync import SyncGuard, SyncTask

__all__ = [
    "Approval",
    "ApprovalDenied",
    "ApprovalRequired",
    "DpopKey",
    "Guard",
    "GuardError",
    "Progress",
    "SyncGuard",
    "SyncTask",
    "Task",
    "TokenSource",
    "ToolError",
    "from_problem",
]
