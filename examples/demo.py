"""`make demo`: guard on the demo config, the example tools and approver, and the example agents.

Everything runs on loopback with the demo ports (guard 8080, notes 9101, payments 9102, the MCP
files server 9103, research 9104, outside 9105, the approver 9200) and is stopped by PID at the end. The audit
trails stay under ./var/audit; it ends with the `guard audit show` line that prints one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "examples/guard.yaml"
SECRET = "demo-finance-secret"  # noqa: S105 - the demo webhook secret shared by guard and the example approver
PY = sys.executable

SERVICES = [
    ("notes", [PY, "-m", "examples.notes", "--port", "9101"], 9101),
    ("payments", [PY, "-m", "examples.payments", "--port", "9102"], 9102),
    ("files (mcp)", [PY, "-m", "examples.mcp_server", "--port", "9103"], 9103),
    ("research", [PY, "-m", "examples.research", "--port", "9104"], 9104),
    ("outside", [PY, "-m", "examples.outside", "--port", "9105"], 9105),
    ("approver", [PY, "-m", "examples.approver", "--port", "9200", "--auto", "approve"], 9200),
    ("guard", [PY, "-m", "guard", "--config", CONFIG, "serve"], 8080),
]
AGENTS = [
    ("research agent: allowed, denied, unknown action, chained, budget", "examples.agent"),
    ("billing agent: step-up approved over the signed webhook", "examples.billing_agent"),
    ("MCP agent: the files MCP server through guard", "examples.mcp_agent"),
    ("MCP client with no token: a person's consent (development sign-in) creates the task", "examples.oauth_agent"),
    ("exfiltration: an injected instruction tries to mail a private note out", "examples.exfil_agent"),
]


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a demo service exited early; see var/demo-logs/ ({proc.args!r})")
        if busy(port):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def show_command() -> str:
    """The command line that prints the newest task's trail, runnable as printed from the
    repository root (the guard script installed next to this Python, and the demo config)."""
    trails = sorted((ROOT / "var" / "audit").glob("task_*.jsonl"), key=lambda p: p.stat().st_mtime)
    task = trails[-1].stem if trails else "<task_id>"
    guard = Path(PY).parent / "guard"
    if guard.is_relative_to(ROOT):
        guard = guard.relative_to(ROOT)
    return f"{guard} audit show {task} --config {CONFIG}"


def main() -> int:
    taken = [port for _, _, port in SERVICES if busy(port)]
    if taken:
        print(f"ports already in use: {taken}; stop what runs there and try again", file=sys.stderr)
        return 1
    logs = ROOT / "var" / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GUARD_WEBHOOK_SECRET_FINANCE": SECRET, "GUARD_CONFIG": CONFIG}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd, port in SERVICES:
            with (logs / f"{name.split()[0]}.log").open("wb") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_port(port, proc)
            print(f"started {name:<12} on 127.0.0.1:{port} (pid {proc.pid})")
        failed = 0
        for title, module in AGENTS:
            if not (ROOT / "examples" / f"{module.split('.')[-1]}.py").exists():
                continue
            print(f"\n=== {title}\n")
            result = subprocess.run([PY, "-m", module, "--config", CONFIG], cwd=ROOT, env=env, timeout=120)
            failed += result.returncode != 0
        print(f"\naudit trails: {ROOT / 'var' / 'audit'}")
        print(f"read one:     {show_command()}")
        print(f"service logs: {logs}")
        verdict = "every agent got the answers it expected" if not failed else f"{failed} agent(s) surprised"
        print(f"demo finished: {verdict}")
        return 1 if failed else 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
