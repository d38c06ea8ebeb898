"""`guard serve --workers N`: N guard processes on one port (SO_REUSEPORT), for hosts with more
cores. Workers share no memory, so they need the Redis store; the supervisor only starts them,
passes SIGTERM/SIGINT on, and stops the rest (exit 1) when one of them dies."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from guard.config import Config
from guard.log import get_logger

__all__ = ["check_workers", "supervise"]

log = get_logger("guard.workers")


def check_workers(cfg: Config, workers: int) -> str | None:
    """Why `workers` processes cannot serve this config (None: they can)."""
    if workers > 1 and cfg.store.url.startswith("memory://"):
        return ("--workers needs a shared store: the memory store lives in one process, so tasks, budgets "
                "and audit chains would split between workers; set store.url to redis://…")
    return None


def _child_args(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "guard"]
    if args.config:
        argv += ["--config", args.config]
    argv += ["serve", "--reuse-port"]
    if args.console_logs:
        argv.append("--console-logs")
    return argv


def supervise(args: argparse.Namespace, workers: int) -> int:
    children = [subprocess.Popen(_child_args(args)) for _ in range(workers)]
    log.info("workers_started", workers=workers, pids=[c.pid for c in children])
    stopping = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    if not stopping:
        dead = [c.pid for c in children if c.poll() is not None]
        log.error("worker_exited", pids=dead)
        stop(signal.SIGTERM, None)
    for c in children:
        try:
            c.wait(15)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return 0 if stopping and all(c.returncode in (0, -signal.SIGTERM, -signal.SIGINT) for c in children) else 1
