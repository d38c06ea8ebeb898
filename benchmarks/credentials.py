"""Credential providers against the jwt allow path, in one run, on this machine.

    python -m benchmarks.credentials            # a few minutes on 2 cores
    python -m benchmarks.credentials --quick    # a smoke run

Three tools on one upstream, one guard (memory store), real OpenBao and a real authorization
server (npm oidc-provider, tests/support/oidc):
- "jwt allow":            credential mode jwt (a cred+jwt signed per call): the baseline;
- "static from OpenBao":  mode static, the secret read from OpenBao KV v2 (cache_s 60);
- "oauth2 per task":      mode oauth2, client credentials with private_key_jwt, one token per task.
Once warm, neither provider may add a round trip per call: the target is at least 0.95 times the jwt allow
path's throughput in the same run. The first call of a task (oauth2: its token request) and the
first call of a fresh guard (static: login and KV read) report their added latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import PY, free_port, spawn
from benchmarks.load import Request, Result, have_wrk, run_load
from benchmarks.targets import AGENT, Environment
from tests.support.oidc import OidcProvider, oidc_provider_missing_reason
from tests.support.openbao import OpenBao, openbao_missing_reason

SCENARIOS = {"jwt allow": "echo", "static from OpenBao": "kv", "oauth2 per task": "oauth"}
RESOURCE = "https://notes.example"


def policy(upstream: int, as_url: str) -> dict[str, Any]:
    up = f"http://127.0.0.1:{upstream}"
    actions = {"read": {"method": "GET", "path": "/items/{id}"}}
    return {
        "tools": {
            "echo": {"kind": "http", "upstream": up, "credential": {"mode": "jwt"}, "actions": actions},
            "kv": {"kind": "http", "upstream": up, "actions": actions, "credential": {
                "mode": "static", "header": "Authorization", "format": "Bearer {secret}",
                "secret": {"vault": "secret/data/tools/notes#api_key"}}},
            "oauth": {"kind": "http", "upstream": up, "actions": actions, "credential": {
                "mode": "oauth2", "token_url": f"{as_url}/token", "revocation_url": f"{as_url}/token/revocation",
                "client_id": "guard-bench", "resource": RESOURCE, "scopes": {"read": ["notes:read"]}}},
        },
        "rules": [{"id": "reads", "effect": "allow", "match": {"tool": ["echo", "kv", "oauth"], "action": "read"}}],
    }


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",  # noqa: S310 (loopback)
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        data: dict[str, Any] = json.loads(r.read())
        return data


def _timed_get(url: str, token: str) -> float:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 (loopback)
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        r.read()
        assert r.status == 200
    return (time.perf_counter() - started) * 1000


class Guard:
    def __init__(self, workdir: Path, upstream: int, as_url: str, bao: OpenBao, env: Environment) -> None:
        self.port = free_port()
        (workdir / "policies").mkdir(parents=True, exist_ok=True)
        (workdir / "policies" / "bench.yaml").write_text(yaml.safe_dump(policy(upstream, as_url)))
        cfg = {"listen": {"host": "127.0.0.1", "port": self.port}, "store": {"url": "memory://"},
               "audit": {"dir": str(workdir / "audit")}, "signing": {"key_file": str(workdir / "signing-key.json")},
               "dev_key_file": str(workdir / "dev-issuer-key.json"), "policies": str(workdir / "policies"),
               "secrets": {"vault": {"url": bao.url, "cache_s": 60, "auth": {
                   "method": "token", "token_file": str(bao.write_token_file(workdir / "bao-token"))}}}}
        self.config = workdir / "guard.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc = spawn("guard-credentials", [PY, "-m", "guard", "--config", str(self.config), "serve"],
                          workdir, self.port)
        env.procs.append(self.proc)
        self.idp = subprocess.run([PY, "-m", "guard", "--config", str(self.config), "dev-token", "--sub", AGENT],
                                  capture_output=True, text=True, check=True, cwd=workdir).stdout.strip()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tasks(self, n: int) -> list[str]:
        return [_post(f"{self.url}/v1/tasks", {"purpose": "benchmark", "requested_by": "bench@example",
                                                "ttl_s": 3600}, self.idp)["task_token"] for _ in range(n)]


def measure(guard: Guard, tasks: int, quick: bool, rounds: int, seconds: float, connections: int,
            wrk: bool) -> None:
    """Warm up, run the interleaved rounds, print the table, the first-call latencies and the targets."""
    tokens = tuple(guard.tasks(tasks))
    kv, oauth = f"{guard.url}/tools/kv/items/1", f"{guard.url}/tools/oauth/items/1"
    cold_static = _timed_get(kv, tokens[0])
    first = [(_timed_get(oauth, t), _timed_get(oauth, t)) for t in guard.tasks(10 if quick else 30)]
    loaded: dict[str, list[Result]] = {name: [] for name in SCENARIOS}
    unloaded: dict[str, list[Result]] = {name: [] for name in SCENARIOS}
    requests = {name: Request("GET", f"/tools/{tool}/items/1", tokens=tokens) for name, tool in SCENARIOS.items()}
    for req in requests.values():  # warm-up: every task gets its token
        run_load(guard.port, req, connections, 1.0, wrk)
    for _ in range(rounds):
        for name, req in requests.items():
            loaded[name].append(run_load(guard.port, req, connections, seconds, wrk))
        for name, req in requests.items():
            unloaded[name].append(run_load(guard.port, req, 1, max(1.0, seconds / 2), wrk))
    print(f"load: {'wrk' if wrk else 'aiohttp generator'}, {connections} connections, {seconds:g} s, "
          f"{rounds} round(s) after a warm-up; calls spread over {tasks} tasks")
    print("| scenario | req/s | p50 ms | p99 ms | 1-conn p50 ms | ÷ jwt allow | errors |")
    print("|---|---|---|---|---|---|---|")
    ratios: dict[str, float] = {}
    for name in SCENARIOS:
        rs, med = loaded[name], statistics.median
        ratios[name] = med(r.rps / j.rps for r, j in zip(rs, loaded["jwt allow"], strict=True) if j.rps)
        print(f"| {name} | {med(r.rps for r in rs):,.0f} | {med(r.p50_ms for r in rs):.2f} | "
              f"{med(r.p99_ms for r in rs):.2f} | {med(r.p50_ms for r in unloaded[name]):.3f} | "
              f"{ratios[name]:.2f} | {sum(r.unexpected for r in rs + unloaded[name])} |")
    warm_static = statistics.median(r.p50_ms for r in unloaded["static from OpenBao"])
    print(f"\nfirst call of a task, oauth2 per task: +{statistics.median(f - s for f, s in first):.2f} ms over its "
          f"second call (median of {len(first)} tasks: the token request)")
    print(f"first call of a fresh guard, static from OpenBao: {cold_static:.2f} ms (login and KV read) vs "
          f"{warm_static:.3f} ms warm p50")
    print("\ntargets:")
    for name in ("static from OpenBao", "oauth2 per task"):
        print(f"  {'ok  ' if ratios[name] >= 0.95 else 'MISS'} {name} ÷ jwt allow ≥ 0.95: {ratios[name]:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.credentials", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--tasks", type=int, default=32)
    a = p.parse_args(argv)
    rounds, seconds = a.rounds or (1 if a.quick else 3), a.duration or (2.0 if a.quick else 4.0)
    wrk = have_wrk()
    for reason in (openbao_missing_reason(), oidc_provider_missing_reason()):
        if reason:
            print(f"skipped: {reason}")
            return 0
    with tempfile.TemporaryDirectory(prefix="guard-bench-creds-") as tmp:
        work = Path(tmp)
        env = Environment(work)
        bao = OpenBao(work / "openbao")
        as_port = free_port()
        guard: Guard | None = None
        tool_as: OidcProvider | None = None
        try:
            env.start_upstream()
            bao.start()
            bao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "bench-api-key"}})
            guard = Guard(work / "guard", env.upstream_port, f"http://127.0.0.1:{as_port}", bao, env)
            tool_as = OidcProvider(work / "as", "tool_as.mjs", {
                "clients": [{"client_id": "guard-bench", "token_endpoint_auth_method": "private_key_jwt",
                             "jwks_uri": f"{guard.url}/.well-known/jwks.json", "grant_types": ["client_credentials"],
                             "redirect_uris": [], "response_types": []}],
                "resources": {RESOURCE: {"scope": "notes:read", "ttl_s": 3600}}}, port=as_port).start()
            measure(guard, a.tasks, a.quick, rounds, seconds, a.connections, wrk)
        finally:
            if tool_as is not None:
                tool_as.stop()
            bao.stop()
            env.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
