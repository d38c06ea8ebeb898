"""Processes of the benchmark, on the helpers the tests use (tests/support/process.py): the
environment of a child, the event loop, a process started and waited for."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.process import PY, ROOT, Proc, free_port, wait_port
from tests.support.process import spawn as spawn_process

__all__ = ["PY", "ROOT", "Proc", "child_env", "free_port", "install_uvloop", "spawn"]


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


def spawn(name: str, args: list[str], workdir: Path, port: int | None = None,
          env: dict[str, str] | None = None) -> Proc:
    """Start `args` in `workdir` (its output in `<name>.log`) and wait until it listens on `port`."""
    proc = spawn_process(args, workdir, f"{name}.log", child_env(env))
    if port is not None:
        try:
            wait_port(port, timeout=20.0, proc=proc.popen)
        except RuntimeError as e:
            raise RuntimeError(f"{e}:\n{proc.log()[-2000:]}") from None
        except TimeoutError:
            proc.stop()
            raise
    return proc
