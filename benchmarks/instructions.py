"""Instructions per call, counted by valgrind's callgrind: a before/after that machine noise cannot move.

    python -m benchmarks.instructions                       # this checkout, memory and Redis stores
    python -m benchmarks.instructions --baseline ../before  # and another checkout's guard, side by side

On a shared machine without hardware counters, CPU seconds per call move by ±10 % from run to
run, more than most changes of the hot path are worth. Callgrind counts the instructions a
process executes instead, whatever else the machine is doing. Each proxy (the bare aiohttp
proxy, the guard on the memory store and on a redis-server of its own, and the guard of every
`--baseline` checkout on each of those stores) runs under `valgrind --tool=callgrind` with the
instrumentation off while it starts and warms up; then it is switched on
(`callgrind_control -i on`) for a fixed number of calls driven at a fixed concurrency, and the
count is dumped. Every thread of the process counts (the audit writer and signing threads
too); redis-server's work does not.

It prints instructions per call, `÷ bare` (the guard's instructions per call over the bare
proxy's, in the same run) and `÷ this` (a baseline's over this checkout's). Under callgrind a
process runs about 50 times slower, so what happens on a timer (the fallback check of watched
tasks, retention's sweep) weighs more here than it does at full speed; with no watches and
nothing to sweep it is a few hundred instructions a turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.common import PY, child_env, free_port
from benchmarks.run import MCP_BODY
from benchmarks.scale import POST_BODY
from benchmarks.targets import AGENT, Environment, _post_json, redis_missing, text_body
from tests.support.process import Proc, spawn, wait_port

__all__ = ["main"]

REQUESTS = {
    "http POST 1 KiB": ("/tools/echo/items", {"Content-Type": "application/json"}, POST_BODY),
    "http POST 1 KiB prose": ("/tools/echo/items", {"Content-Type": "application/json"}, text_body(1024)),
    "http POST 64 KiB prose": ("/tools/echo/items", {"Content-Type": "application/json"}, text_body(65536)),
    "mcp tools/call": ("/mcp/files", {"Content-Type": "application/json",
                                      "Accept": "application/json, text/event-stream"}, MCP_BODY),
}
START_S = 180.0  # starting a Python process under valgrind takes a while


@dataclass
class Counted:
    name: str
    port: int
    proc: Proc
    out: Path  # callgrind's output file (each dump adds .N)
    tokens: list[str]
    dumps: int = 0


def valgrind_missing() -> str | None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return "valgrind is not installed (apt-get install valgrind)"
    return None


def _under_callgrind(env: Environment, name: str, args: list[str], port: int,
                     extra_env: dict[str, str] | None = None) -> tuple[Proc, Path]:
    out = env.dir / f"callgrind.{name}.out"
    proc = spawn(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *args],
                 env.dir, f"{name}.log", child_env({"PYTHONHASHSEED": "0", **(extra_env or {})}))
    try:
        wait_port(port, timeout=START_S, proc=proc.popen)
    except (RuntimeError, TimeoutError) as e:
        proc.stop()
        raise RuntimeError(f"{name}: {e}:\n{proc.log()[-2000:]}") from None
    env.procs.append(proc)
    return proc, out


def start_guard(env: Environment, name: str, store_url: str, checkout: str | None,
                detectors: bool = False) -> Counted:
    port = free_port()
    gdir = env.dir / name
    gdir.mkdir()
    config = env.guard_config(gdir, port, store_url, detectors=detectors)
    extra = {"PYTHONPATH": checkout} if checkout else None
    proc, out = _under_callgrind(env, name, [PY, "-m", "guard", "--config", str(config), "serve"], port, extra)
    idp = subprocess.run([PY, "-m", "guard", "--config", str(config), "dev-token", "--sub", AGENT],
                         capture_output=True, text=True, check=True, cwd=env.dir, env=child_env(extra)).stdout.strip()
    body = {"purpose": "benchmark", "requested_by": "bench@example", "ttl_s": 3600}
    tokens = [_post_json(f"http://127.0.0.1:{port}/v1/tasks", body, idp)["task_token"] for _ in range(32)]
    return Counted(name, port, proc, out, tokens)


def start_bare(env: Environment, tokens: list[str]) -> Counted:
    port = free_port()
    proc, out = _under_callgrind(env, "bare", [PY, "-m", "benchmarks.bare_proxy", str(port),
                                               f"http://127.0.0.1:{env.upstream_port}"], port)
    return Counted("bare proxy", port, proc, out, tokens)


async def drive(port: int, request: str, tokens: list[str], calls: int, connections: int) -> int:
    """`calls` calls over `connections` keep-alive connections, the tokens round-robin; returns
    how many did not answer 200."""
    path, headers, body = REQUESTS[request]
    url = f"http://127.0.0.1:{port}{path}"
    failed = 0
    counter = iter(range(calls))
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as http:

        async def worker() -> None:
            nonlocal failed
            for i in counter:
                auth = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
                async with http.post(url, data=body, headers={**headers, **auth}) as r:
                    await r.read()
                    failed += r.status != 200

        await asyncio.gather(*(worker() for _ in range(connections)))
    return failed


def _control(flag: str, target: Counted) -> None:
    subprocess.run(["callgrind_control", flag, str(target.proc.pid)], check=True, capture_output=True)


def count(target: Counted, request: str, calls: int, warmup: int, connections: int) -> float:
    """Instructions per call of `target` for `calls` calls of `request`, after `warmup` uncounted ones."""
    if asyncio.run(drive(target.port, request, target.tokens, warmup, connections)):
        raise RuntimeError(f"{target.name}: the warm-up calls failed (see its log)")
    _control("--instr=on", target)
    failed = asyncio.run(drive(target.port, request, target.tokens, calls, connections))
    _control("--dump", target)
    _control("--instr=off", target)
    target.dumps += 1
    if failed:
        raise RuntimeError(f"{target.name}: {failed} of {calls} calls did not answer 200")
    return total_instructions(Path(f"{target.out}.{target.dumps}")) / calls


def total_instructions(dump: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if dump.exists():
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):  # (a later part's summary line is wrong)
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no totals to {dump}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=300, help="counted calls per request kind (default 300)")
    p.add_argument("--warmup", type=int, default=100, help="uncounted calls before (default 100)")
    p.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections (default 8)")
    p.add_argument("--baseline", action="append", default=[], metavar="DIR",
                   help="also count the guard of this checkout, on every store; repeatable")
    p.add_argument("--memory-only", action="store_true", help="no Redis targets")
    p.add_argument("--detectors", action="store_true",
                   help="also count this checkout's guard with inspect.detectors [secrets, pii] on")
    p.add_argument("--only", action="append", choices=sorted(REQUESTS), help="count only this request (repeatable)")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the run's folder (callgrind's dumps, for callgrind_annotate) in DIR")
    args = p.parse_args(argv)
    if reason := valgrind_missing():
        print(f"skipped: {reason}")
        return 2
    redis_reason = None if args.memory_only else redis_missing()
    with tempfile.TemporaryDirectory(prefix="guard-instructions-") as tmp:
        env = Environment(Path(args.keep) if args.keep else Path(tmp))
        try:
            env.start_upstream()
            stores = {"memory": "memory://"}
            if not args.memory_only and redis_reason is None:
                stores["redis"] = env.start_redis()
            elif redis_reason:
                print(redis_reason)
            targets = [start_guard(env, f"guard-{kind}", url, None) for kind, url in stores.items()]
            ours_of = {t.name: t.name for t in targets}  # each target's row of this checkout (÷ this)
            for i, checkout in enumerate(args.baseline):  # beside this checkout's guard on every store
                for kind, url in stores.items():
                    label = f"guard-{kind}-{Path(checkout).name or i}"
                    targets.append(start_guard(env, label, url, os.path.abspath(checkout)))
                    ours_of[label] = f"guard-{kind}"
            if args.detectors:  # the content detectors on (secrets, pii), on the last store
                kind, url = list(stores.items())[-1]
                targets.append(start_guard(env, f"guard-{kind}-detectors", url, None, detectors=True))
                ours_of[targets[-1].name] = f"guard-{kind}"
            bare = start_bare(env, targets[0].tokens)
            print(f"{args.calls} calls counted per row after {args.warmup} uncounted, "
                  f"{args.connections} connections; instructions of the whole process (all threads)")
            print("| target | request | instructions per call | ÷ bare | ÷ this |")
            print("|---|---|---|---|---|")
            for request in [r for r in REQUESTS if not args.only or r in args.only]:
                floor = count(bare, request, args.calls, args.warmup, args.connections)
                print(f"| bare proxy | {request} | {floor:,.0f} | 1.00 | - |")
                ours: dict[str, float] = {}
                for t in targets:
                    n = count(t, request, args.calls, args.warmup, args.connections)
                    ours.setdefault(ours_of[t.name], n)  # this checkout's rows come first
                    versus = "-" if ours_of[t.name] == t.name else f"{n / ours[ours_of[t.name]]:.3f}"
                    print(f"| {t.name} | {request} | {n:,.0f} | {n / floor:.2f} | {versus} |")
                    sys.stdout.flush()
        finally:
            env.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
