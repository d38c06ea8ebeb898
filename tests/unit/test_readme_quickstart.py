"""README's first screen shows the agent code `guard init` writes (agent.py, which the install test
runs against a real guard), line for line: what a reader copies is what was run."""

from __future__ import annotations

import re

from guard.cli.init import STARTER_FILES
from tests.support.process import ROOT


def test_readme_shows_install_init_and_the_agent_code_that_the_install_test_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("## Quickstart", 1)[0]
    assert 'pip install "./dist/guard-0.1.0-py3-none-any.whl[tool]"' in first_screen
    assert "guard init my-guard" in first_screen
    shown = re.search(r"```python\n(.*?)```", first_screen, re.S)
    assert shown is not None
    agent = (ROOT / "guard" / "starter" / "agent.py").read_text().replace("{{GUARD_URL}}", "http://127.0.0.1:8080")
    body = agent[agent.index("async def main()"):agent.index("\n\n\nasyncio.run")] + "\n"
    assert shown.group(1) == body
    assert len(body.splitlines()) <= 10
    assert "agent.py" in STARTER_FILES


def test_the_wheel_version_in_the_readme_is_the_packages() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    assert f"guard-{version.group(1)}-py3-none-any.whl" in (ROOT / "README.md").read_text()
