"""The exfiltration demo end to end, from the repository's own policies, with real processes: the
example notes tool, the outside world (a web page carrying an injected instruction, an outbox) and
guard, on free ports. The demo agent reads a private note, fetches the page and tries to mail the
note out: verbatim, base64 and hex are refused, a secret in a mail is refused, any other mail needs
approval, and nothing reached the outbox."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.guard import Guard
from tests.support.process import PY, ROOT, free_port, spawn, wait_port


def test_an_injected_instruction_cannot_mail_a_private_note_out(
    guard_factory: Callable[..., Guard], tmp_path: Path
) -> None:
    notes_port, outside_port = free_port(), free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    for f in (ROOT / "policies").glob("*.yaml"):
        text = f.read_text()
        text = re.sub(r"127\.0\.0\.1:9101", f"127.0.0.1:{notes_port}", text)
        text = re.sub(r"127\.0\.0\.1:9105", f"127.0.0.1:{outside_port}", text)
        (policies / f.name).write_text(text)
    guard = guard_factory(policies, {"inspect": {"detectors": ["secrets", "pii"]}}, start=False)
    guard_url = guard.url
    procs = [spawn([PY, "-m", "examples.notes", "--port", str(notes_port), "--guard-url", guard_url], tmp_path,
                   "notes.log", {"PYTHONPATH": str(ROOT)}),
             spawn([PY, "-m", "examples.outside", "--port", str(outside_port)], tmp_path, "outside.log",
                   {"PYTHONPATH": str(ROOT)})]
    try:
        for port, proc in zip((notes_port, outside_port), procs, strict=True):
            wait_port(port, proc=proc.popen)
        guard.start()
        out = subprocess.run([PY, "-m", "examples.exfil_agent", "--guard-url", guard.url, "--config",
                              str(guard.config_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**guard.env, "PATH": "/usr/bin:/bin"} | {"PYTHONPATH": str(ROOT)})
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert sum("[exfiltration_blocked]" in ln for ln in lines) == 3, out.stdout
        assert any("[content_blocked]" in ln for ln in lines)
        assert any("[approval_required]" in ln and "rule trifecta" in ln for ln in lines)
        assert "the value came from call call_" in out.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{outside_port}/outbox", timeout=10) as r:
            assert json.loads(r.read()) == []  # nothing left the organisation
    finally:
        for proc in procs:
            proc.stop()
