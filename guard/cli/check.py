"""`guard config check`: every check `guard serve` makes before it listens, without serving."""

from __future__ import annotations

import argparse
from typing import Any

from guard.config import load_config

__all__ = ["add_commands"]


def cmd_config_check(args: argparse.Namespace) -> int:
    """The config, its policies, their credentials' needs, the key, JWKS, TLS and trust-bundle
    files, as `guard serve` loads them (build_app); a missing key is not created. A failure is one
    line `error: FILE[:LINE]: KEY: REASON` and exit 2 (guard.cli.main)."""
    from guard.app import build_app
    from guard.checks import load_checked_policies
    from guard.log import configure_logging

    configure_logging(json_logs=False, level="WARNING")  # warnings (to stderr) as `serve` would log them
    cfg = load_config(args.config)
    policies = load_checked_policies(cfg)
    build_app(cfg, policies, dry_run=True)
    print(f"ok: {cfg.source}: {len(policies.tools)} tools, {len(policies.agents)} agents, "
          f"{len(policies.rules)} rules in {cfg.policies}; listens on {cfg.listen.host}:{cfg.listen.port}")
    return 0


def add_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="check the configuration").add_subparsers(dest="config_cmd", required=True)
    c = config.add_parser("check", help="run every check `guard serve` runs before it listens")
    c.set_defaults(func=cmd_config_check)
