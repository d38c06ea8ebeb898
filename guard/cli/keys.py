"""`guard keys init | rotate` and `guard dev-token`: the guard's signing key, tokens of the development issuer."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard.config import load_config

__all__ = ["add_commands", "duration"]

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds from `90`, `90s`, `5m`, `2h` or `1d` (an argparse type: a bad value is a usage error)."""
    found = _DURATION.fullmatch(text.strip())
    seconds = int(found.group(1)) * _UNIT_S[found.group(2)] if found else 0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: seconds, or 30s, 5m, 2h, 1d")
    return seconds


def cmd_keys_init(args: argparse.Namespace) -> int:
    from guard.identity.keyring import read_ring
    from guard.identity.tokens import GuardKeys

    cfg = load_config(args.config, secrets=False)
    existed = Path(cfg.signing.key_file).exists()
    keys = GuardKeys(read_ring(cfg.signing.key_file, cfg.signing.algorithm).current, cfg.issuer)
    state = "exists" if existed else "created"
    print(f"{state}: {cfg.signing.key_file} (kid {keys.current.kid}, {keys.current.alg})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from guard.identity.keyring import policy_retain_s, rotate
    from guard.policy import load_policies

    cfg = load_config(args.config, secrets=False)
    done = rotate(cfg.signing.key_file, cfg.signing.algorithm, policy_retain_s(cfg, load_policies(cfg.policies)))
    assert done is not None
    until = datetime.fromtimestamp(done.previous_until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"rotated: {cfg.signing.key_file}: kid {done.kid} signs from now on; "
          f"kid {done.previous_kid} verifies until {until}, then leaves JWKS")
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    from guard.identity.issuers import dev_token

    cfg = load_config(args.config, secrets=False)
    print(dev_token(cfg, args.sub, args.role or [], args.ttl))
    return 0


def add_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_cmd", required=True)
    ki = keys.add_parser("init", help="create the signing key if missing")
    ki.set_defaults(func=cmd_keys_init)
    kr = keys.add_parser("rotate", help="a new signing key; the previous one verifies until its tokens expired")
    kr.set_defaults(func=cmd_keys_rotate)

    d = sub.add_parser("dev-token", help="mint a token of the local development issuer")
    d.add_argument("--sub", required=True, help="the token's subject: an agent (spiffe://...) or a person")
    d.add_argument("--role", action="append",
                   help="a role to grant (repeatable): guard:admin, guard:auditor, guard:approver")
    d.add_argument("--ttl", type=duration, default=3600, metavar="DURATION",
                   help="lifetime: seconds, or 30s, 5m, 2h, 1d (default 1h)")
    d.set_defaults(func=cmd_dev_token)
