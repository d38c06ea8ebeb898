"""`guard init DIR`: a folder to run guard from, outside any checkout.

It writes guard.yaml (safe defaults: loopback, development issuer only), example policies with a
policy test, two example tools that check guard's credentials (aiohttp, FastAPI), a webhook
approver, the agent SDK quick start, and a README saying how to run them and make the first call.
The files ship inside the package (guard/starter/) and are never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

__all__ = ["STARTER_FILES", "add_commands", "cmd_init", "write_starter"]

#: What `guard init` writes, relative to the folder (the starter package data).
STARTER_FILES = (
    "guard.yaml",
    "README.md",
    "notes_tool.py",
    "summarize_tool.py",
    "approver.py",
    "agent.py",
    "policies/tools.yaml",
    "policies/agents.yaml",
    "policies/rules.yaml",
    "policies/tests/notes.yaml",
)


def _source(rel: str) -> Traversable:
    node = resources.files("guard") / "starter"
    for part in rel.split("/"):
        node = node / part
    return node


def write_starter(folder: Path, port: int, tool_port: int, force: bool = False) -> list[Path]:
    """Write the starter files into `folder`; refuse (FileExistsError) to overwrite any unless `force`."""
    targets = [folder / rel for rel in STARTER_FILES]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(t) for t in existing))
    values = {"{{GUARD_PORT}}": str(port), "{{TOOL_PORT}}": str(tool_port),
              "{{SUMMARIZE_PORT}}": str(tool_port + 1), "{{APPROVER_PORT}}": str(tool_port + 2),
              "{{GUARD_URL}}": f"http://127.0.0.1:{port}"}
    for rel, target in zip(STARTER_FILES, targets, strict=True):
        text = _source(rel).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return targets


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65534:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port")
    return port


def cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        written = write_starter(folder, args.port, args.tool_port, args.force)
    except FileExistsError as e:
        print(f"error: would overwrite {e} (use --force to replace them)", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"next: cd {folder} and follow README.md (guard serve --config guard.yaml)")
    return 0


def add_commands(sub: Any) -> None:
    i = sub.add_parser("init", help="write a guard.yaml, example policies, a policy test and a README into DIR")
    i.add_argument("dir", metavar="DIR", nargs="?", default=".", help="the folder to set up (default: here)")
    i.add_argument("--port", type=_port, default=8080, help="the port guard listens on, on loopback (default 8080)")
    i.add_argument("--tool-port", type=_port, default=9101,
                   help="the example notes tool's port; summarize and the approver take the next two (default 9101)")
    i.add_argument("--force", action="store_true", help="overwrite files that exist")
    i.set_defaults(func=cmd_init)
