"""An agent whose task token is bound to it: by its X.509-SVID over mTLS, or by a DPoP key.

With an SVID (no bearer token at all: the certificate is the identity):

    python -m examples.identity_agent --guard https://127.0.0.1:8443 --ca var/bundle.pem \\
        --cert var/agent.pem --key var/agent.key --tool echo --path /items/1

With DPoP (an IdP token proves who the agent is; the task token is bound to a key made here,
and every call carries a fresh proof signed with it; proofs made by hand with `cryptography`
and PyJWT, see tests/support/dpop.py):

    python -m examples.identity_agent --guard http://127.0.0.1:8080 --dpop \\
        --token "$(guard --config guard.yaml dev-token --sub dev-agent)" --tool echo --path /items/1

It creates a task, calls the tool twice and prints what guard answered; exit 0 when both calls
were allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import Any

import aiohttp

__all__ = ["main"]


async def run(args: argparse.Namespace) -> int:
    ctx: ssl.SSLContext | bool = True
    if args.guard.startswith("https://"):
        ctx = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    key = None
    if args.dpop:
        from tests.support.dpop import DpopKey

        key = DpopKey()
    headers: dict[str, str] = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        url = f"{args.guard}/v1/tasks"
        if key is not None:
            headers["DPoP"] = key.proof("POST", url)
        async with s.post(url, json={"purpose": args.purpose}, headers=headers) as r:
            task: dict[str, Any] = await r.json(content_type=None)
            if r.status != 201:
                print(f"task refused: {r.status} {task.get('detail')}")
                return 1
        token = task["task_token"]
        print(f"task {task['task_id']} for {task['agent']}, bound by {task['binding']}")
        ok = True
        for _ in range(2):
            call = f"{args.guard}/tools/{args.tool}{args.path}"
            call_headers = {"Authorization": f"Bearer {token}"}
            if key is not None:
                call_headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", call, token)}
            async with s.get(call, headers=call_headers) as r:
                await r.read()
                print(f"GET /tools/{args.tool}{args.path} -> {r.status}")
                ok = ok and r.status == 200
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.identity_agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guard", required=True, help="guard's base URL")
    p.add_argument("--ca", help="the CA bundle guard's certificate chains to (https)")
    p.add_argument("--cert", help="the agent's X.509-SVID (PEM)")
    p.add_argument("--key", help="its private key (PEM)")
    p.add_argument("--token", help="an IdP token (not needed with an SVID admitted by an x509 issuer)")
    p.add_argument("--dpop", action="store_true", help="bind the task token to a DPoP key")
    p.add_argument("--tool", default="echo")
    p.add_argument("--path", default="/items/1")
    p.add_argument("--purpose", default="workload identity demo")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
