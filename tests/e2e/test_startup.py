"""Starting `guard serve` as a process: a bad config or policy stops it with one line, the
embedded default creates what it needs, `guard keys init` makes the key it then signs with.
(The request path itself: tests/app/test_spine.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.client import echo_policy
from tests.support.guard import Guard
from tests.support.process import PY, free_port, spawn, wait_port
from tests.support.upstream import Upstream


def test_bad_config_and_policy_stop_startup(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("listen: {host: 127.0.0.1, port: 8080}\nstore: {urll: x}\n")
    out = subprocess.run([PY, "-m", "guard", "--config", str(tmp_path / "bad.yaml"), "serve"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "bad.yaml" in out.stderr and "store.urll" in out.stderr
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.yaml").write_text("tools:\n  a:\n    kind: http\n   upstream: x\n")
    (tmp_path / "ok.yaml").write_text(f"policies: {pol}\n")
    out = subprocess.run([PY, "-m", "guard", "--config", str(tmp_path / "ok.yaml"), "serve"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "p.yaml:4" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_embedded_default_creates_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text("rules: []\n")
    port = free_port()
    proc = spawn([PY, "-m", "guard", "serve"], tmp_path, "guard.log", {"GUARD_LISTEN_PORT": str(port)})
    try:
        wait_port(port, proc=proc.popen)
        assert (tmp_path / "var" / "signing-key.json").exists()
        assert (tmp_path / "var" / "audit").is_dir()
        assert oct((tmp_path / "var" / "signing-key.json").stat().st_mode & 0o777) == "0o600"
        assert "development_mode" in proc.log()
    finally:
        proc.stop()
    assert not os.environ.get("GUARD_LISTEN_PORT")


async def test_keys_init_creates_the_key_the_guard_then_signs_with(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), start=False)
    first = g.cli("keys", "init")
    assert first.returncode == 0 and first.stdout.startswith("created:")
    kid = first.stdout.split("kid ")[1].split(",")[0]
    again = g.cli("keys", "init")
    assert again.returncode == 0 and again.stdout.startswith("exists:") and f"kid {kid}," in again.stdout
    g.start()
    async with http.get(f"{g.url}/.well-known/jwks.json") as r:
        assert [k["kid"] for k in (await r.json())["keys"]] == [kid]
