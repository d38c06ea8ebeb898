"""The tools the policy unit tests decide over (evaluation, `guard policy test`, the property
tests): one copy of the `notes` and `vault` tools."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["NOTES", "TOOLS", "VAULT", "tools_yaml"]

NOTES: dict[str, Any] = {"kind": "http", "upstream": "http://127.0.0.1:9101",
                         "actions": {"read": {"method": "GET", "path": "/notes/{id}"},
                                     "write": {"method": "POST", "path": "/notes"}}}
VAULT: dict[str, Any] = {"kind": "http", "upstream": "http://127.0.0.1:9102",
                         "actions": {"read": {"method": "GET", "path": "/secrets/{name}"}}}
TOOLS: dict[str, Any] = {"notes": NOTES, "vault": VAULT}


def tools_yaml(**tools: dict[str, Any]) -> str:
    """`tools:` as a policy file holds it: notes and vault, each of `tools` added or replacing one."""
    return yaml.safe_dump({"tools": {**TOOLS, **tools}}, sort_keys=False)
