"""The README's demo command runs end to end, so the examples never rot."""

from __future__ import annotations

import importlib
import pkgutil
import shlex
import subprocess
import sys

import examples
from tests.support.process import ROOT


def test_every_example_module_imports() -> None:
    names = [m.name for m in pkgutil.iter_modules(examples.__path__)]
    assert {"agent", "notes", "payments", "research", "toolkit", "approver", "demo"} <= set(names)
    for name in names:
        importlib.import_module(f"examples.{name}")


def test_demo_runs_every_agent_to_its_expected_answers() -> None:
    out = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for expected in ("[allow]", "[denied]", "[unknown_action]", "[budget_exhausted]", "chained POST",
                     "[approval_required]", "[held, then allow]", "audit: ", "verified: True",
                     "demo finished: every agent got the answers it expected",
                     "approved: agent client:client_", "[revoked] the next call answers 401"):
        assert expected in text, expected
    # the line the demo ends with runs as printed and shows a trail
    line = next(ln for ln in text.splitlines() if ln.startswith("read one:")).removeprefix("read one:").strip()
    assert "<" not in line, line
    shown = subprocess.run(shlex.split(line), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "chain: verified" in shown.stdout


def test_demo_vault_shows_a_rotation_and_a_revocation() -> None:
    from tests.support.openbao import openbao_missing_reason
    from tests.support.postgres import postgres_missing_reason
    from tests.support.process import require

    require(openbao_missing_reason() or postgres_missing_reason())
    out = subprocess.run([sys.executable, "-m", "examples.demo_vault"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for expected in ("notes got  'Bearer demo-key-1'", "notes got  'Bearer demo-key-2'", "'version': 2",
                     "is gone: the lease was revoked", "credential_revoked",
                     "demo-vault finished: rotation and revocation shown"):
        assert expected in out.stdout, expected
