"""Development mode never faces a network: `guard serve` refuses it off loopback, and the
container image (Dockerfile) cannot start in it, nor with no configuration at all. Real
`guard serve` processes, started with the image's own command and environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.client import echo_policy
from tests.support.guard import write_guard
from tests.support.idp import Idp
from tests.support.process import PY, ROOT, free_port


def dockerfile() -> tuple[dict[str, str], list[str], str]:
    """The final stage's (ENV, ENTRYPOINT + CMD, USER)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stage = re.split(r"^FROM ", text, flags=re.M)[-1]
    env: dict[str, str] = {}
    command: list[str] = []
    user = "root"
    for line in stage.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        elif word in ("ENTRYPOINT", "CMD"):
            command += json.loads(rest)
        elif word == "USER":
            user = rest.strip()
    return env, command, user


def serve(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The image's command, run here: `guard` is `python -m guard`; none of this machine's GUARD_*."""
    assert command[0] == "guard"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    return subprocess.run([PY, "-m", "guard", *command[1:]], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_image_runs_as_a_user_and_needs_its_configuration(tmp_path: Path) -> None:
    env, command, user = dockerfile()
    assert user.split(":")[0] not in ("root", "0")
    assert env["GUARD_LISTEN_HOST"] == "0.0.0.0"
    assert not re.search(r"^COPY .*policies", (ROOT / "Dockerfile").read_text(), re.M)  # no demo policies inside
    # a `docker run` with nothing mounted: one line naming the missing file, and no listener
    out = serve(command, {**env, "GUARD_CONFIG": str(tmp_path / "etc" / "guard.yaml")}, tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path / 'etc' / 'guard.yaml'}: cannot read: "
                                               "No such file or directory"], out.stderr
    assert not (tmp_path / "var").exists()  # nothing was created: it stopped before anything else


def test_the_image_refuses_development_mode(tmp_path: Path) -> None:
    env, command, _ = dockerfile()
    port = free_port()
    g = write_guard(tmp_path, echo_policy("http://127.0.0.1:9"), port=port)
    for config in ({}, {"dev_issuer": True, "issuers": [Idp(tmp_path).issuer_config()]}):
        raw = yaml.safe_load(g.config_path.read_text())
        g.config_path.write_text(yaml.safe_dump({**raw, **config}))
        out = serve(command, {**env, "GUARD_CONFIG": str(g.config_path)}, tmp_path)
        assert out.returncode != 0
        [line] = out.stderr.strip().splitlines()
        assert line.startswith("error: GUARD_LISTEN_HOST: '0.0.0.0' is not a loopback address"), line
        assert "development mode" in line
        assert "guard_started" not in out.stdout


def test_serve_refuses_development_mode_off_loopback(tmp_path: Path) -> None:
    g = write_guard(tmp_path, echo_policy("http://127.0.0.1:9"), {"listen": {"host": "0.0.0.0"}})
    out = serve(["guard", "serve", "--config", str(g.config_path)], {}, tmp_path)
    assert out.returncode == 2
    line = next(n for n, text in enumerate(g.config_path.read_text().splitlines(), 1) if "0.0.0.0" in text)
    assert out.stderr.strip().splitlines() == [
        f"error: {g.config_path}:{line}: listen.host: '0.0.0.0' is not a loopback address: in development mode "
        "(dev_issuer: true, or no issuers and no sso) guard listens on loopback only; configure issuers to "
        "serve a network"], out.stderr
