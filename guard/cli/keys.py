"""`guard keys init | rotate` and `guard dev-token`: the guard's signing key, tokens of the development issuer."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard.config import load_config
from guard.errors import ConfigError
from guard.identity.auth import ADMIN, APPROVER, AUDITOR
from guard.identity.tokens import KeyFileError

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

ROLES = (ADMIN, AUDITOR, APPROVER)


def cmd_keys_init(args: argparse.Namespace) -> int:
    from guard.identity.keyring import read_ring
    from guard.identity.tokens import GuardKeys

    cfg = load_config(args.config, secrets=False)
    existed = Path(cfg.signing.key_file).exists()
    try:
        keys = GuardKeys(read_ring(cfg.signing.key_file, cfg.signing.algorithm).current, cfg.issuer)
    except KeyFileError as e:
        raise cfg.error(("signing", "key_file"), str(e)) from None
    state = "exists" if existed else "created"
    print(f"{state}: {cfg.signing.key_file} (kid {keys.current.kid}, {keys.current.alg})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from guard.identity.keyring import retain_s, rotate
    from guard.policy import load_policies

    cfg = load_config(args.config, secrets=False)
    try:
        keep_s = retain_s(cfg, *load_policies(cfg.policies).lifetimes())
        done = rotate(cfg.signing.key_file, cfg.signing.algorithm, keep_s)
    except KeyFileError as e:
        raise cfg.error(("signing", "key_file"), str(e)) from None
    assert done is not None
    until = datetime.fromtimestamp(done.previous_until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"rotated: {cfg.signing.key_file}: kid {done.kid} signs from now on; "
          f"kid {done.previous_kid} verifies until {until}, then leaves JWKS")
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    """Only a token the configured guard accepts: it trusts the development issuer (development
    mode), the roles are ones it knows (the parser's choices), the token is not born expired."""
    from guard.identity.issuers import dev_token

    cfg = load_config(args.config, secrets=False)
    if not cfg.dev_mode:
        why = "dev_issuer is false" if cfg.dev_issuer is False else "issuers are configured"
        raise cfg.error(("dev_issuer",), f"this guard does not trust development tokens ({why}): "
                        "ask one of its issuers for a token")
    if not args.sub.strip():
        raise ConfigError("--sub", "", "must name the agent or person (e.g. spiffe://acme/agent/researcher)")
    if args.ttl < 1:
        raise ConfigError("--ttl", "", "must be at least 1 second")
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
    d.add_argument("--role", action="append", choices=ROLES,
                   help="a role of the guard's API to grant (repeatable): guard:admin, guard:auditor, guard:approver")
    d.add_argument("--ttl", type=duration, default=3600, metavar="DURATION",
                   help="lifetime: seconds, or 30s, 5m, 2h, 1d (default 1h)")
    d.set_defaults(func=cmd_dev_token)
