"""A real `guard serve` process in a folder of its own (config, policies, keys, audit)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from guard.config import load_config
from guard.identity.issuers import dev_token
from tests.support.process import PY, Proc, Stoppable, free_port, spawn, wait_port

__all__ = ["Guard", "GuardLike", "shared_keys", "write_guard"]


class GuardLike(Protocol):
    """What a request-path test needs of a guard, a process (Guard) or in this one (tests/support/app.py)."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def dir(self) -> Path: ...

    def token(self, sub: str, *roles: str, ttl: int = 3600) -> str: ...

    def audit_dir(self) -> Path: ...


@dataclass
class Guard(Stoppable):
    """A real `guard serve` process in its own folder."""

    dir: Path
    port: int
    config_path: Path
    env: dict[str, str]
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Guard:
        self.proc = spawn([PY, "-m", "guard", "--config", str(self.config_path), "serve"], self.dir,
                          f"guard-{self.port}.log", self.env)
        if wait:
            try:
                wait_port(self.port, proc=self.proc.popen)
            except (RuntimeError, TimeoutError) as e:
                raise RuntimeError(f"guard did not start: {e}\n{self.proc.log()}") from e
        return self

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "guard", "--config", str(self.config_path), *args], cwd=self.dir,
                              capture_output=True, text=True, env={**os.environ, **self.env}, check=check, timeout=60)

    def token(self, sub: str, *roles: str, ttl: int = 3600) -> str:
        """A development-issuer token, minted in this process with the guard's development key, as
        `guard dev-token` mints it (no CLI process per token; examples/agent.py runs the command)."""
        return dev_token(load_config(self.config_path, env={**os.environ, **self.env}), sub, list(roles), ttl)

    def log(self) -> str:
        return self.proc.log() if self.proc else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON lines of its log (structlog's events), parsed."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def audit_dir(self) -> Path:
        return self.dir / "var" / "audit"


def write_guard(
    tmp: Path,
    policies: dict[str, Any] | str | Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Guard:
    """Write a guard folder (config + policies) under `tmp`; `policies` is a dict (written as
    policies/policy.yaml), YAML text, or a folder to copy."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "var").mkdir(exist_ok=True)  # guard creates its keys only in a folder that exists
    pol_dir = tmp / "policies"
    if isinstance(policies, Path):
        if not pol_dir.exists():
            shutil.copytree(policies, pol_dir)
    else:
        pol_dir.mkdir(exist_ok=True)
        text = policies if isinstance(policies, str) else yaml.safe_dump(policies, sort_keys=False)
        (pol_dir / "policy.yaml").write_text(text)
    port = port or free_port()
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "policies": str(pol_dir),
        "audit": {"dir": str(tmp / "var" / "audit")},
        "signing": {"key_file": str(tmp / "var" / "signing-key.json")},
        "dev_key_file": str(tmp / "var" / "dev-issuer-key.json"),
    }
    for k, v in (config or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = tmp / f"guard-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Guard(tmp, port, path, dict(env or {}))


def shared_keys(folder: Path, audit: bool = False) -> dict[str, Any]:
    """guard.yaml keys of instances that act as one: one signing key and one development issuer key
    in `folder` (a token one of them makes works at every one), and with `audit` one audit folder."""
    folder.mkdir(parents=True, exist_ok=True)  # keys are created only in a folder that exists
    keys: dict[str, Any] = {"signing": {"key_file": str(folder / "signing-key.json")},
                            "dev_key_file": str(folder / "dev-issuer-key.json")}
    if audit:
        keys["audit"] = {"dir": str(folder / "audit")}
    return keys
