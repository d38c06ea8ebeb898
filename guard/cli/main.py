"""guard init | serve | config check | policy check|test | audit show|verify|export | agents
| tasks list|show|revoke | approvals list|decide | keys init|rotate | dev-token | --version

The parser and the entry point; each command group lives in its own module of guard/cli/.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from guard import __version__
from guard.cli import agents, audit, check, init, keys, policy, remote, serve, tools
from guard.errors import ConfigError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Every parser of the CLI takes `--config FILE`, so it may stand before or after any
    subcommand (`guard serve --config f` is `guard --config f serve`). Subcommand parsers are
    made from this class too (argparse builds them from the parent's type); their `--config`
    has no default, so one given before the subcommand is not overwritten by its absence after."""

    def __init__(self, *args: Any, config_default: Any = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--config", default=config_default, metavar="FILE",
                          help="config file (default: $GUARD_CONFIG or the embedded default)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="guard", description="zero-trust proxy between AI agents and their tools", config_default=None)
    p.add_argument("--version", action="version", version=f"guard {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    init.add_commands(sub)
    serve.add_commands(sub)
    check.add_commands(sub)
    policy.add_commands(sub)
    audit.add_commands(sub)
    keys.add_commands(sub)
    agents.add_commands(sub)
    remote.add_commands(sub)
    tools.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:  # a bad config, policy, key or TLS file, a port in use: one line
        print(f"error: {e}", file=sys.stderr)
        return int(getattr(args, "config_error_exit", 2))  # `policy check|test` keep their documented 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
