"""summarize: a FastAPI tool behind guard that calls another tool through guard (written by `guard init`).

    python summarize_tool.py        # listens on 127.0.0.1:{{SUMMARIZE_PORT}}; needs `pip install "guard[tool]"`

guard.tool's middleware checks guard's credential before the handler runs; the httpx client's
TxnTokenAuth sends the Txn-Token of the call being served, so the chained call to notes is
authorized by guard as part of the same task, with no code for it here.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request

from guard.tool import Verifier
from guard.tool.asgi import GuardMiddleware
from guard.tool.httpx import TxnTokenAuth

GUARD_URL = os.environ.get("GUARD_URL", "{{GUARD_URL}}")
PORT = int(os.environ.get("SUMMARIZE_PORT", "{{SUMMARIZE_PORT}}"))

app = FastAPI()
app.add_middleware(GuardMiddleware, verifier=Verifier(GUARD_URL, "summarize"))


@app.post("/summaries")
async def summarize(request: Request) -> dict[str, Any]:
    cred = request.state.guard  # task, agent, chain, scope
    async with httpx.AsyncClient(auth=TxnTokenAuth(GUARD_URL)) as guard:
        answer = await guard.get(f"{GUARD_URL}/tools/notes/notes")  # chained: summarize -> notes
    answer.raise_for_status()
    titles = [note["title"] for note in answer.json()["notes"]]
    return {"task": cred.task, "notes": len(titles), "summary": "; ".join(titles)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT)
