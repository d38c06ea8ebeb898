"""A real redis-server, stopped by PID."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.process import Proc, Stoppable, spawn, wait_port

__all__ = ["RedisServer", "redis_missing_reason"]


@dataclass
class RedisServer(Stoppable):
    dir: Path
    port: int
    proc: Proc | None = None
    appendfsync: str = "always"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                "--notify-keyspace-events", "", "--daemonize", "no"]
        self.proc = spawn(args, self.dir, "redis.log")
        wait_port(self.port, proc=self.proc.popen)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the AOF is loaded and PING answers
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if out.stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        return self


def redis_missing_reason() -> str | None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    return None
