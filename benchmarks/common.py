"""Processes of the benchmark: free ports, start, wait, stop by PID, RSS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: it finds `benchmarks` from any working directory."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), **(extra or {})}


def install_uvloop() -> None:
    """The same event loop the guard uses when it is installed."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def spawn(name: str, args: list[str], workdir: Path, port: int | None = None,
          env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("ab") as f:
        popen = subprocess.Popen(args, cwd=workdir, stdout=f, stderr=subprocess.STDOUT,
                                 env=child_env(env))
    proc = Proc(name, popen, log)
    if port is not None:
        try:
            wait_port(port, popen, log)
        except (RuntimeError, TimeoutError):
            proc.stop()
            raise
    return proc
