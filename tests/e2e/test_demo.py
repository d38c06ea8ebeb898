"""The README's demo command runs end to end, so the examples never rot."""

from __future__ import annotations

import importlib
import pkgutil
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
                     "demo finished: every agent got the answers it expected"):
        assert expected in text, expected
