"""Closed-loop load: `wrk` with a Lua script when it is installed, else an aiohttp load generator
of our own (in its own process, so it never shares a core's event loop with what it measures).

    python -m benchmarks.load '<json spec>'   # the aiohttp generator; prints one JSON result line
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import PY, child_env, install_uvloop

MARK = "LOADRESULT "


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    expect: int = 200
    tokens: tuple[str, ...] = ()  # sent round-robin as `Authorization: Bearer …` (many tasks at once)


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    unexpected: int  # answers with another status than expected, and socket errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for ASCII input


def wrk_script(req: Request, ports: tuple[int, ...] = ()) -> str:
    lines = [f"wrk.method = {_lua_str(req.method)}", f"wrk.path = {_lua_str(req.path)}"]
    if len(ports) > 1:  # one wrk thread per port: the connections split evenly between them
        lines.append("local ports = {" + ", ".join(_lua_str(str(p)) for p in ports) + "}")
        lines.append("""local nthreads = 0
setup = function(thread)
  nthreads = nthreads + 1
  thread.addr = wrk.lookup("127.0.0.1", ports[(nthreads - 1) % #ports + 1])[1]
end""")
    for k, v in req.headers.items():
        lines.append(f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}")
    if req.body:
        lines.append(f"wrk.body = {_lua_str(req.body)}")
    if req.tokens:
        lines.append("local tokens = {" + ", ".join(_lua_str(t) for t in req.tokens) + "}")
        lines.append("""local i = 0
request = function()
  i = i % #tokens + 1
  wrk.headers["Authorization"] = "Bearer " .. tokens[i]
  return wrk.format()
end""")
    lines.append("""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%s{"requests":%d,"us":%d,"p50_us":%d,"p99_us":%d,"non2xx":%d,"socket":%d}\\n',
    "LOADRESULT ", summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
""")
    return "\n".join(lines)


def run_wrk(port: int | tuple[int, ...], req: Request, connections: int, seconds: float) -> Result:
    ports = port if isinstance(port, tuple) else (port,)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(req, ports))
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", f"-t{len(ports)}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
             "-s", script, f"http://127.0.0.1:{ports[0]}"],
            capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        Path(script).unlink()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    d = json.loads(line[len(MARK):])
    wrong = d["non2xx"] if req.expect < 400 else d["requests"] - d["non2xx"]
    return Result(d["requests"], d["us"] / 1e6, d["p50_us"] / 1000, d["p99_us"] / 1000, wrong + d["socket"])


def run_aiohttp(port: int | tuple[int, ...], req: Request, connections: int, seconds: float) -> Result:
    spec = {"ports": list(port) if isinstance(port, tuple) else [port], "method": req.method, "path": req.path,
            "headers": req.headers, "body": req.body,
            "expect": req.expect, "connections": connections, "seconds": seconds, "tokens": list(req.tokens)}
    out = subprocess.run([PY, "-m", "benchmarks.load", json.dumps(spec)], capture_output=True, text=True,
                         timeout=seconds + 60, check=False, env=child_env())
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"load generator failed: {out.stderr[-1000:]}")
    return Result(**json.loads(line[len(MARK):]))


def run_load(port: int | tuple[int, ...], req: Request, connections: int, seconds: float, use_wrk: bool) -> Result:
    """Closed-loop load on `port`; with several ports, the connections go round-robin over them."""
    return (run_wrk if use_wrk else run_aiohttp)(port, req, connections, seconds)


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def _generate(spec: dict[str, Any]) -> Result:
    import aiohttp

    urls = [f"http://127.0.0.1:{port}{spec['path']}" for port in spec["ports"]]
    body = spec["body"].encode() or None
    latencies: list[float] = []
    unexpected = 0
    stop_at = time.perf_counter() + spec["seconds"]

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal unexpected
        url = urls[n % len(urls)]  # connection n stays on one port
        headers = dict(spec["headers"])
        tokens = spec["tokens"]
        while time.perf_counter() < stop_at:
            if tokens:
                headers["Authorization"] = f"Bearer {tokens[n % len(tokens)]}"
                n += 1
            t0 = time.perf_counter()
            try:
                async with session.request(spec["method"], url, headers=headers, data=body) as r:
                    await r.read()
                    unexpected += r.status != spec["expect"]
            except aiohttp.ClientError:
                unexpected += 1
            latencies.append((time.perf_counter() - t0) * 1000)

    conn = aiohttp.TCPConnector(limit=spec["connections"])
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session, i) for i in range(spec["connections"])))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Result(len(latencies), elapsed, _percentile(latencies, 0.5), _percentile(latencies, 0.99), unexpected)


def main() -> None:
    install_uvloop()
    result = asyncio.run(_generate(json.loads(sys.argv[1])))
    print(MARK + json.dumps(result.__dict__), flush=True)


if __name__ == "__main__":
    main()
