"""guard serve | policy check | policy test | audit show|verify|export | agents | keys init | dev-token"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard.audit.calltree import call_tree
from guard.audit.chain import verify_chain
from guard.audit.trails import read_trail
from guard.cli.agents import add_agents_command
from guard.cli.audit import RemoteError, add_export_command, add_remote_args, describe_break, fetch_trail
from guard.config import Config, load_config
from guard.errors import ConfigError

__all__ = ["main"]


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before any thread starts (as MALLOC_ARENA_MAX does): the audit
    writer's and the resolver's threads otherwise each get an arena, and the process's memory keeps
    creeping up from fragmentation under long load. An explicit MALLOC_ARENA_MAX wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-8), ctypes.c_int(arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


async def tune_gc(_: object) -> None:
    """Once the guard has started (an aiohttp on_startup hook): what exists now (modules, policies,
    keys, the store) lives as long as the process, so full collections stop walking it
    (gc.freeze); and young collections run every 10,000 allocations instead of 700, since
    each call allocates a few hundred short-lived objects that reference counting frees anyway."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from guard.app import build_app
    from guard.cli.workers import check_workers, supervise
    from guard.log import configure_logging

    cfg = _cfg(args)
    limit_malloc_arenas()
    configure_logging(json_logs=not args.console_logs)
    refused = check_workers(cfg, args.workers)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    if args.workers > 1:
        build_app(cfg)  # a bad policy stops here, once, not in every worker
        return supervise(args, args.workers)
    app = build_app(cfg)
    app.on_startup.append(tune_gc)  # after the app's own startup (cleanup contexts run first)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        app,
        host=cfg.listen.host,
        port=cfg.listen.port,
        access_log=None,
        print=None,
        # passed straight to aiohttp's request handler (run_app has no handler_args: a dict there
        # is silently dropped). keepalive_timeout also bounds how long a connection may take to
        # send a request's headers: aiohttp closes a connection still waiting for a whole request.
        keepalive_timeout=cfg.limits.read_timeout_s,
        max_field_size=8190,
        max_line_size=8190,
        shutdown_timeout=5,
        reuse_port=args.reuse_port or None,
    )
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from guard.policy import check_policies

    cfg = _cfg(args)
    path = args.path or cfg.policies
    policies, warnings = check_policies(path)
    for w in warnings:
        print(f"warning: {w}")
    print(f"ok: {len(policies.tools)} tools, {len(policies.agents)} agents, {len(policies.rules)} rules in {path}")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from guard.policy import load_policies
    from guard.policy.testing import run_policy_tests

    cfg = _cfg(args)
    path = Path(args.path or cfg.policies)
    policies = load_policies(path)
    results = run_policy_tests(policies, Path(args.tests) if args.tests else path / "tests")
    failed = 0
    for r in results:
        mark = "ok  " if r.ok else "FAIL"
        print(f"{mark} {r.file}:{r.line} {r.name}" + ("" if r.ok else f": {r.message}"))
        failed += 0 if r.ok else 1
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


def _fmt_time(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), UTC).strftime("%H:%M:%S.%f")[:-3]
    except (TypeError, ValueError):
        return "?"


def _printable(text: str) -> str:
    """Escape control and format characters (ANSI escapes, CR, bidi overrides) so a hostile
    value in a record cannot rewrite the reader's terminal."""
    return "".join(
        c if c.isprintable() and unicodedata.category(c) != "Cf" else f"\\u{ord(c):04x}" for c in text
    )


def format_timeline(records: list[dict[str, Any]]) -> list[str]:
    """One line per record; a chained call is indented under the call that led to it."""
    lines = []
    for depth, r in call_tree(records):
        what = f"{r.get('tool')}.{r.get('action')}" if r.get("tool") else ""
        cols = [
            _fmt_time(r.get("ts")),
            f"#{r.get('seq')}",
            "  " * depth + ("└ " if depth else "") + str(r.get("event")),
            what,
            str(r.get("effect") or ""),
            f"rule={r['rule_id']}" if r.get("rule_id") else "",
            f"status={r['status']}" if r.get("status") is not None else "",
            f"{r['latency_ms']}ms" if r.get("latency_ms") is not None else "",
            str(r.get("detail") or ""),
        ]
        lines.append(_printable("  ".join(c for c in cols if c)))
    return lines


def _trail(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.url:
        try:
            return fetch_trail(args.url, args.token, args.task)
        except RemoteError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from e
    cfg = _cfg(args)
    if not cfg.audit.dir:
        raise ConfigError(cfg.source, "audit.dir", "no audit folder configured")
    records = read_trail(cfg.audit.dir, args.task)
    if not records:
        print(f"no audit trail for {args.task} in {cfg.audit.dir}", file=sys.stderr)
        raise SystemExit(1)
    return records


def cmd_audit_show(args: argparse.Namespace) -> int:
    records = _trail(args)
    if args.json:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    day = datetime.fromtimestamp(float(records[0].get("ts") or 0), UTC).strftime("%Y-%m-%d")
    print(f"task {_printable(args.task)}: {len(records)} records, times UTC from {day}")
    for line in format_timeline(records):
        print(line)
    v = verify_chain(records)
    print("chain: verified" if v.verified else _printable(f"chain: BROKEN: {describe_break(records, v)}"))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    records = _trail(args)
    v = verify_chain(records)
    if v.verified:
        print(f"verified: {v.count} records, chain intact")
        return 0
    print(_printable(f"BROKEN: {describe_break(records, v)}"))
    return 2


def cmd_keys_init(args: argparse.Namespace) -> int:
    from guard.identity.tokens import GuardKeys, load_or_create_key

    cfg = _cfg(args)
    existed = Path(cfg.signing.key_file).exists()
    keys = GuardKeys(load_or_create_key(cfg.signing.key_file, cfg.signing.algorithm), cfg.issuer)
    state = "exists" if existed else "created"
    print(f"{state}: {cfg.signing.key_file} (kid {keys.current.kid}, {keys.current.alg})")
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    from guard.identity.issuers import dev_token

    cfg = _cfg(args)
    print(dev_token(cfg, args.sub, args.role or [], args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guard", description="zero-trust proxy between AI agents and their tools")
    p.add_argument("--config", help="config file (default: $GUARD_CONFIG or the embedded default)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the guard")
    s.add_argument("--console-logs", action="store_true", help="human-readable logs instead of JSON")
    s.add_argument("--workers", type=int, default=1, help="processes on one port (SO_REUSEPORT; needs the Redis store)")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set in each worker
    s.set_defaults(func=cmd_serve)

    pol = sub.add_parser("policy", help="check or test policies").add_subparsers(dest="policy_cmd", required=True)
    c = pol.add_parser("check", help="validate the policy folder")
    c.add_argument("path", nargs="?")
    c.set_defaults(func=cmd_policy_check)
    t = pol.add_parser("test", help="run the cases in policies/tests/*.yaml")
    t.add_argument("path", nargs="?")
    t.add_argument("--tests", help="folder of test cases (default: <policies>/tests)")
    t.set_defaults(func=cmd_policy_test)

    aud = sub.add_parser("audit", help="read audit trails").add_subparsers(dest="audit_cmd", required=True)
    sh = aud.add_parser("show", help="print a task's timeline")
    sh.add_argument("task")
    sh.add_argument("--json", action="store_true")
    add_remote_args(sh)
    sh.set_defaults(func=cmd_audit_show)
    ve = aud.add_parser("verify", help="verify a task's hash chain (exit 2 naming the first bad record)")
    ve.add_argument("task")
    add_remote_args(ve)
    ve.set_defaults(func=cmd_audit_verify)
    add_export_command(aud, _cfg)

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_cmd", required=True)
    ki = keys.add_parser("init", help="create the signing key if missing")
    ki.set_defaults(func=cmd_keys_init)

    add_agents_command(sub)

    d = sub.add_parser("dev-token", help="mint a token of the local development issuer")
    d.add_argument("--sub", required=True)
    d.add_argument("--role", action="append", help="guard:admin, guard:auditor, guard:approver")
    d.add_argument("--ttl", type=int, default=3600)
    d.set_defaults(func=cmd_dev_token)
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
