"""What the benchmark measures: the upstream tool, the bare proxy, guard on the memory store and
guard on a redis-server of its own, each a process on a free loopback port, stopped by PID."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import PY, Proc, free_port, spawn
from tests.support.redis import RedisServer, redis_missing_reason

AGENT = "spiffe://bench/agent/worker"


def policy(upstream_port: int) -> dict[str, Any]:
    """One HTTP tool, one MCP tool and a tool that chains to the first; no budgets, no rates."""
    up = f"http://127.0.0.1:{upstream_port}"
    return {
        "tools": {
            "echo": {"kind": "http", "upstream": up, "credential": {"mode": "jwt"},
                     "actions": {"read": {"method": "GET", "path": "/items/{id}"},
                                 "delete": {"method": "DELETE", "path": "/items/{id}"},
                                 "create": {"method": "POST", "path": "/items"}}},
            "chainer": {"kind": "http", "upstream": up, "credential": {"mode": "jwt"},
                        "actions": {"run": {"method": "GET", "path": "/chain"}}},
            "files": {"kind": "mcp", "upstream": f"{up}/mcp", "credential": {"mode": "jwt"}},
        },
        "rules": [
            {"id": "read-items", "effect": "allow", "match": {"tool": "echo", "action": "read"}},
            {"id": "no-delete", "effect": "deny", "match": {"tool": "echo", "action": "delete"}},
            {"id": "chain-runs", "effect": "allow", "match": {"tool": "chainer", "action": "run"}},
            {"id": "read-files", "effect": "allow",
             "match": {"tool": "files", "action": "read_file", "args": [{"path": "$.path", "matches": "/docs/.*"}]}},
            {"id": "create-items", "effect": "allow", "match": {"tool": "echo", "action": "create"}},
        ],
    }


_PROSE = ("The weekly report covers the tools the research agents used, the calls they made and the "
          "approvals they asked for. Three papers on agent sandboxing were read and summarised; the summary "
          "compares task-bound credentials with long-lived keys, version 3.11 of the runtime, order 4711 and "
          "the meeting on 2026-11-02 at 10:30. ")


def text_body(size: int) -> str:
    """A JSON body of `size` bytes: a note of ordinary prose (what a detector reads and finds nothing in)."""
    head = {"title": "weekly report", "tags": ["research", "bench"], "body": ""}
    room = size - len(json.dumps(head, separators=(",", ":")))
    text = (_PROSE * (room // len(_PROSE) + 1))[:room]
    return json.dumps({**head, "body": text}, separators=(",", ":"))


@dataclass
class Target:
    name: str
    port: int
    proc: Proc
    tokens: list[str] = field(default_factory=list)  # task tokens (the bare proxy borrows guard's)


def _post_json(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",  # noqa: S310 (loopback)
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        data: dict[str, Any] = json.loads(r.read())
        return data


def redis_missing() -> str | None:
    reason = redis_missing_reason()
    return f"{reason}: the Redis targets are skipped" if reason else None


class Environment:
    """Starts and stops every process of a run, in a temporary folder."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[Proc] = []
        self.upstream_port = free_port()
        (workdir / "policies").mkdir(parents=True, exist_ok=True)
        (workdir / "policies" / "bench.yaml").write_text(yaml.safe_dump(policy(self.upstream_port)))

    def _spawn(self, name: str, args: list[str], port: int | None) -> Proc:
        proc = spawn(name, args, self.dir, port)
        self.procs.append(proc)
        return proc

    def start_upstream(self) -> None:
        self._spawn("upstream", [PY, "-m", "benchmarks.upstream", str(self.upstream_port)], self.upstream_port)

    def start_bare(self) -> Target:
        port = free_port()
        proc = self._spawn("bare", [PY, "-m", "benchmarks.bare_proxy", str(port),
                                    f"http://127.0.0.1:{self.upstream_port}"], port)
        return Target("bare proxy", port, proc)

    def start_redis(self) -> str:
        rdir = self.dir / "redis"
        rdir.mkdir(exist_ok=True)
        server = RedisServer(rdir, free_port(), appendfsync="everysec").start()
        assert server.proc is not None
        self.procs.append(server.proc)
        return server.url

    def guard_config(self, gdir: Path, port: int, store_url: str, instance: str = "",
                     detectors: bool = False) -> Path:
        """The config file of a benchmark guard on `port`: its keys in `gdir` (shared by the
        instances of one setup), its audit folder and config file named by `instance`; with
        `detectors`, the content detectors (secrets and pii) on."""
        config = gdir / f"guard{instance}.yaml"
        inspect = {"inspect": {"detectors": ["secrets", "pii"]}} if detectors else {}
        config.write_text(yaml.safe_dump({
            **inspect,
            "listen": {"host": "127.0.0.1", "port": port},
            "store": {"url": store_url},
            "audit": {"dir": str(gdir / f"audit{instance}")},
            "signing": {"key_file": str(gdir / "signing-key.json")},
            "dev_key_file": str(gdir / "dev-issuer-key.json"),
            "policies": str(self.dir / "policies"),
        }))
        return config

    def start_guard(self, name: str, store_url: str, tasks: int, extra: list[str] | None = None,
                    detectors: bool = False) -> Target:
        port = free_port()
        gdir = self.dir / name.replace(" ", "-")
        gdir.mkdir()
        config = self.guard_config(gdir, port, store_url, detectors=detectors)
        proc = self._spawn(name.replace(" ", "-"),
                           [PY, "-m", "guard", "--config", str(config), "serve", *(extra or [])], port)
        idp = subprocess.run([PY, "-m", "guard", "--config", str(config), "dev-token", "--sub", AGENT],
                             capture_output=True, text=True, check=True, cwd=self.dir).stdout.strip()
        url = f"http://127.0.0.1:{port}/v1/tasks"
        tokens = [_post_json(url, {"purpose": "benchmark", "requested_by": "bench@example", "ttl_s": 3600},
                             idp)["task_token"] for _ in range(tasks)]
        return Target(name, port, proc, tokens)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
