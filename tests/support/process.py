"""Processes the tests start: free loopback ports, waiting for a port, a child process stopped by PID.

Shared by the fixtures in tests/ and by benchmarks/.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PY", "ROOT", "Proc", "Stoppable", "bindable", "free_port", "require", "spawn", "wait_port"]

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
PY = sys.executable


# The ports free_port hands out. Below the kernel's ephemeral range (32768-60999 on Linux), so no
# outgoing connection takes one as its source port between the check and the server binding it.
# Each pytest-xdist worker draws from its own block (PYTEST_XDIST_WORKER is gw0, gw1…), in order
# from a random start, so two workers of one run never hand out the same port, and a worker hands
# a port out again only after going round its whole block. Even ports only: a server's companion
# port (OpenBao's cluster port is its port + 1) is never handed out. A Redis Cluster node's bus
# port (port + 10000) falls in 20000-29999, where nothing else is drawn.
PORTS = range(10000, 20000)


def _port_cycle() -> Iterator[int]:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = len(PORTS) // workers // 2 * 2
    block = range(PORTS.start + index * size, PORTS.start + (index + 1) * size, 2)
    start = random.randrange(len(block))
    while True:
        yield from block[start:]
        yield from block[:start]
        start = 0


_ports = _port_cycle()


def bindable(port: int) -> bool:
    """Whether a socket can bind 127.0.0.1:`port` now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing is bound to now, from this worker's block (PORTS), whose companion
    ports are free too: port + 1 (OpenBao's cluster port) and port + 10000 (a Redis Cluster
    node's bus port; the machine's own services may hold one there, RabbitMQ's 25672 for one)."""
    for _ in range(len(PORTS)):
        port = next(_ports)
        if bindable(port) and bindable(port + 1) and bindable(port + 10000):
            return port
    raise RuntimeError("no free port in this worker's block")


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Proc:
    """A child process, stopped by PID."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        """Resident memory, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def spawn(args: list[str], cwd: Path, log_name: str, env: dict[str, str] | None = None) -> Proc:
    log_path = cwd / log_name
    f = log_path.open("ab")
    popen = subprocess.Popen(args, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    f.close()
    return Proc(popen, log_path)


def require(reason: str | None) -> None:
    """Skip the test when a real component is missing (`reason`), except under CI=true, where it fails."""
    if reason is None:
        return
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


class Stoppable:
    """Stop (SIGTERM, then SIGKILL) or kill a process the test started, if it runs."""

    proc: Proc | None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def send_signal(self, sig: int) -> None:
        """SIGSTOP, SIGCONT…: a process that hangs without going away."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)


@contextmanager
def module_server(module: str, logs: Path) -> Iterator[int]:
    """`python -m MODULE --port P` from the repository as a real process, on a free port; yields P.
    It runs in `logs` (the test's temp dir), where its log is, never in the repository."""
    port = free_port()
    proc = spawn([PY, "-m", module, "--port", str(port)], logs, f"{module.rsplit('.', 1)[-1]}-{port}.log",
                 {"PYTHONPATH": str(ROOT)})
    try:
        wait_port(port, proc=proc.popen)
        yield port
    finally:
        proc.stop()
