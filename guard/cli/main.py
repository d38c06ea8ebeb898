"""guard serve | policy check | policy test | audit show|verify|export | agents | keys init | dev-token

The parser and the entry point; each command group lives in its own module of guard/cli/.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from guard.cli import agents, audit, keys, policy, serve
from guard.errors import ConfigError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guard", description="zero-trust proxy between AI agents and their tools")
    p.add_argument("--config", help="config file (default: $GUARD_CONFIG or the embedded default)")
    sub = p.add_subparsers(dest="command", required=True)
    serve.add_commands(sub)
    policy.add_commands(sub)
    audit.add_commands(sub)
    keys.add_commands(sub)
    agents.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
