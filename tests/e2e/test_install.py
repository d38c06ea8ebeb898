"""From a checkout to a running guard the way a new user gets there: build the wheel, install it
into a clean venv outside the repository (the locked dependencies, then the wheel), `guard init`,
then the README stub's own commands: the tool, `guard serve`, and the first call."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.process import ROOT, bindable, free_port, require, wait_port

pytestmark = pytest.mark.slow  # a wheel build and a venv from the lock: about 1.5 minutes

AGENT = "spiffe://example/agent/assistant"


@dataclass
class Installed:
    """A venv holding the built wheel and the locked dependencies, nothing from the checkout."""

    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self) -> dict[str, str]:
        """The environment of a user who activated the venv (and has no PYTHONPATH to the repo)."""
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(self.venv),
                "PYTHONPATH": ""}

    def run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env={**os.environ, **self.env()}, capture_output=True, text=True,
                              timeout=300, check=False)


def _pip(py: Path, *args: str) -> None:
    done = subprocess.run([str(py), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from this checkout and install it into a new venv, from the lock's wheels."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "--disable-pip-version-check", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=600, check=False)
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        require("the build backend (setuptools) cannot be downloaded: no package index reachable")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("guard-*.whl")
    target = Installed(root / "venv")
    venv.create(target.venv, with_pip=True)
    _pip(target.bin / "python", "install", "--require-hashes", "-r", str(ROOT / "requirements" / "demo.lock"))
    _pip(target.bin / "python", "install", "--no-deps", str(wheel))
    _pip(target.bin / "python", "check")  # the wheel's own dependencies are all there
    return target


def _three_free_ports() -> int:
    """A port N with N+1 and N+2 free too (the example tools and the approver)."""
    for _ in range(50):
        first = free_port()
        if first < 65530 and all(bindable(first + i) for i in (1, 2)):
            return first
    raise AssertionError("no three consecutive free ports")


@pytest.fixture
def initialised(installed: Installed, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    folder = tmp_path / "my-guard"
    port, tool_port = free_port(), _three_free_ports()
    done = installed.run(["guard", "init", str(folder), "--port", str(port), "--tool-port", str(tool_port)], tmp_path)
    assert done.returncode == 0, done.stderr
    yield folder, port


def _blocks(readme: str, heading: str) -> list[str]:
    """The sh code block under `## heading` of the README stub, as lines (continuations joined)."""
    section = readme.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, f"no sh block under {heading}"
    return block.group(1).replace("\\\n", " ").strip().splitlines()


def test_the_installed_package_is_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    where = installed.run(["python", "-c", "import guard, guard.tool; print(guard.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.venv)
    assert not Path(where.stdout.strip()).is_relative_to(ROOT)


def test_init_writes_a_safe_config_policies_a_policy_test_and_a_readme(
        installed: Installed, initialised: tuple[Path, int]) -> None:
    folder, port = initialised
    for rel in ("guard.yaml", "README.md", "notes_tool.py", "summarize_tool.py", "approver.py", "agent.py",
                "policies/tools.yaml", "policies/agents.yaml", "policies/rules.yaml", "policies/tests/notes.yaml"):
        assert (folder / rel).is_file(), rel
    import yaml

    config = yaml.safe_load((folder / "guard.yaml").read_text())
    assert config["listen"] == {"host": "127.0.0.1", "port": port}  # development mode, so loopback only
    assert "issuers" not in config and "dev_issuer" not in config
    tested = installed.run(["guard", "policy", "test", "--config", "guard.yaml"], folder)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "5 passed, 0 failed" in tested.stdout
    again = installed.run(["guard", "init", str(folder)], folder)  # never overwrites
    assert again.returncode == 1 and "--force" in again.stderr


@contextmanager
def run_block(lines: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The README's "Run it" block as the reader runs it: one shell, tools in the background, guard in
    front. It runs in a session of its own, which is ended (every process of it) afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(["bash", "-c", "\n".join(lines)], cwd=cwd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_guard_serves_outside_the_repository_and_the_readme_runs_as_written(
        installed: Installed, initialised: tuple[Path, int]) -> None:
    require(None if shutil.which("curl") else "curl is not installed (the README stub's first call uses it)")
    folder, port = initialised
    readme = (folder / "README.md").read_text()
    tools_yaml = (folder / "policies/tools.yaml").read_text()
    tool_ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", tools_yaml)]
    assert len(tool_ports) == 2
    approver_port = int(re.findall(r"127\.0\.0\.1:(\d+)/hook", (folder / "guard.yaml").read_text())[0])
    log = folder / "run-it.log"
    with run_block(_blocks(readme, "Run it"), folder, installed.env(), log) as running:
        for p in [*tool_ports, approver_port, port]:
            try:
                wait_port(p, timeout=30, proc=running)
            except (RuntimeError, TimeoutError) as e:
                raise AssertionError(f"port {p}: {e}\n{log.read_text()}") from e
        first_call = "\n".join(_blocks(readme, "The first call"))
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", first_call], cwd=folder,
                              env={**os.environ, **installed.env()}, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        note = json.loads(done.stdout)
        assert note["title"] == "hello" and note["author"] == AGENT and note["task"].startswith("task_")
        audit = installed.run(["guard", "audit", "show", note["task"], "--config", "guard.yaml"], folder)
        assert audit.returncode == 0, audit.stderr
        assert "notes" in audit.stdout and "write" in audit.stdout

        assert _blocks(readme, "The agent SDK") == ["python agent.py"]
        agent = installed.run(["python", "agent.py"], folder)
        assert agent.returncode == 0, agent.stdout + agent.stderr + log.read_text()
        lines = agent.stdout.splitlines()
        assert lines[0].startswith("wrote: {") and "'author': 'spiffe://example/agent/assistant'" in lines[0]
        assert lines[1].startswith("summary: {") and "'notes': 2, 'summary': 'hello; hello'" in lines[1]
        assert lines[2] == "deleted note 2 after approval"
    text = log.read_text()
    assert "development_mode" in text
    assert "approved http://127.0.0.1" in text  # the webhook receiver decided the step-up
