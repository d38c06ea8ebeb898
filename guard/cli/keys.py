"""`guard keys init` and `guard dev-token`: the guard's signing key, tokens of the development issuer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from guard.config import load_config

__all__ = ["add_commands"]


def cmd_keys_init(args: argparse.Namespace) -> int:
    from guard.identity.tokens import GuardKeys, load_or_create_key

    cfg = load_config(args.config)
    existed = Path(cfg.signing.key_file).exists()
    keys = GuardKeys(load_or_create_key(cfg.signing.key_file, cfg.signing.algorithm), cfg.issuer)
    state = "exists" if existed else "created"
    print(f"{state}: {cfg.signing.key_file} (kid {keys.current.kid}, {keys.current.alg})")
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    from guard.identity.issuers import dev_token

    cfg = load_config(args.config)
    print(dev_token(cfg, args.sub, args.role or [], args.ttl))
    return 0


def add_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_cmd", required=True)
    ki = keys.add_parser("init", help="create the signing key if missing")
    ki.set_defaults(func=cmd_keys_init)

    d = sub.add_parser("dev-token", help="mint a token of the local development issuer")
    d.add_argument("--sub", required=True)
    d.add_argument("--role", action="append", help="guard:admin, guard:auditor, guard:approver")
    d.add_argument("--ttl", type=int, default=3600)
    d.set_defaults(func=cmd_dev_token)
