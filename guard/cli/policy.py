"""`guard policy check | test`: validate the policy folder, run its test cases."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from guard.config import load_config

__all__ = ["add_commands"]


def cmd_policy_check(args: argparse.Namespace) -> int:
    from guard.policy import check_policies

    cfg = load_config(args.config, secrets=False)
    path = args.path or cfg.policies
    policies, warnings = check_policies(path)
    from guard.checks import check_credentials, check_redact

    check_credentials(cfg, policies)  # what the credential blocks need from guard.yaml (secrets.vault)
    check_redact(cfg, policies)  # a tool's redact needs its detectors in inspect.detectors
    for w in warnings:
        print(f"warning: {w}")
    print(f"ok: {len(policies.tools)} tools, {len(policies.agents)} agents, {len(policies.rules)} rules in {path}")
    if policies.agents:
        bearer = [a.pattern for a in policies.agents if a.binding != "required"]
        bound = [a.pattern for a in policies.agents if a.binding == "required"]
        print(f"bearer task tokens allowed for: {', '.join(bearer) or 'no agent'}")
        if bound:
            print(f"bearer task tokens refused for (binding: required): {', '.join(bound)}")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from guard.policy import load_policies
    from guard.policy.testing import run_policy_tests

    cfg = load_config(args.config, secrets=False)
    path = Path(args.path or cfg.policies)
    policies = load_policies(path)
    results = run_policy_tests(policies, Path(args.tests) if args.tests else path / "tests",
                               cfg.limits.max_chain_depth)
    failed = 0
    for r in results:
        mark = "ok  " if r.ok else "FAIL"
        print(f"{mark} {r.file}:{r.line} {r.name}" + ("" if r.ok else f": {r.message}"))
        failed += 0 if r.ok else 1
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


def add_commands(sub: Any) -> None:
    pol = sub.add_parser("policy", help="check or test policies").add_subparsers(dest="policy_cmd", required=True)
    c = pol.add_parser("check", help="validate the policy folder")
    c.add_argument("path", nargs="?", help="the policy folder or file (default: the config's `policies`)")
    c.set_defaults(func=cmd_policy_check, config_error_exit=1)
    t = pol.add_parser("test", help="run the cases in policies/tests/*.yaml")
    t.add_argument("path", nargs="?", help="the policy folder (default: the config's `policies`)")
    t.add_argument("--tests", help="folder of test cases (default: <policies>/tests)")
    t.set_defaults(func=cmd_policy_test, config_error_exit=1)
