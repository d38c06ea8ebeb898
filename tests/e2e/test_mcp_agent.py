"""examples/mcp_agent.py as a process against a real `guard serve` with the demo policy, the
files tool at the test's examples/mcp_server.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support.process import PY, ROOT


def test_the_example_mcp_agent(guard_factory: Any, mcp_server: str, tmp_path: Path) -> None:
    """examples/mcp_agent.py against the demo policy, with the files tool at the test's server."""
    policies = tmp_path / "demo-policies"
    shutil.copytree(ROOT / "policies", policies)
    tools = policies / "tools.yaml"
    tools.write_text(tools.read_text().replace("http://127.0.0.1:9103/mcp", mcp_server))
    guard = guard_factory(policies)
    out = subprocess.run([PY, "-m", "examples.mcp_agent", "--guard-url", guard.url, "--config", str(guard.config_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    listed = next(line for line in out.stdout.splitlines() if line.startswith("tools/list"))
    assert "read_file" in listed and "delete_file" not in listed and "write_file" not in listed
    assert "[denied]" in out.stdout and "rule file-deletes-denied" in out.stdout
