"""The sync client, beside the async one: the same calls, each run to completion on an event loop
of its own (one per `SyncGuard`, in the calling thread).

    with SyncGuard("http://127.0.0.1:8080", token=agent_token) as guard:
        with guard.task(purpose="weekly report", tools=["notes"]) as t:
            note = t.call("notes", "read", id=7)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from guard.client.aio import Approval, Guard, Task, _TaskBlock

__all__ = ["SyncGuard", "SyncTask"]

T = TypeVar("T")


class SyncGuard:
    """`Guard` for code without an event loop; takes the same arguments."""

    def __init__(self, url: str, token: Any = None, **options: Any) -> None:
        self._runner = asyncio.Runner()
        self.aio = Guard(url, token, **options)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def __enter__(self) -> SyncGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.run(self.aio.close())
        self._runner.close()

    def task(self, purpose: str, tools: list[str] | None = None, **options: Any) -> _SyncTaskBlock:
        """As `Guard.task`: `with guard.task(...) as t:`; the task ends with the block."""
        return _SyncTaskBlock(self, self.aio.task(purpose, tools, **options))


class _SyncTaskBlock:
    def __init__(self, guard: SyncGuard, block: _TaskBlock) -> None:
        self.guard, self.block = guard, block

    def __enter__(self) -> SyncTask:
        return SyncTask(self.guard, self.guard.run(self.block.__aenter__()))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.guard.run(self.block.__aexit__(exc_type, exc, tb))


class SyncTask:
    """`Task`, with blocking calls."""

    def __init__(self, guard: SyncGuard, task: Task) -> None:
        self.guard, self.aio = guard, task
        self.task_id, self.token = task.task_id, task.token

    def call(self, tool: str, action: str, /, **args: Any) -> Any:
        return self.guard.run(self.aio.call(tool, action, **args))

    def request(self, method: str, tool: str, path: str, *, json_body: Any = None) -> Any:
        return self.guard.run(self.aio.request(method, tool, path, json_body=json_body))

    def tools(self) -> dict[str, dict[str, Any]]:
        return self.guard.run(self.aio.tools())

    def approval(self, approval_id: str) -> Approval:
        return self.guard.run(self.aio.approval(approval_id))

    def complete(self) -> None:
        self.guard.run(self.aio.complete())
