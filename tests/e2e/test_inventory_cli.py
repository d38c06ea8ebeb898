"""`guard policy check` of an inventory: agents need owners, rules naming no registered agent
are warned about. (The inventory on the request path: tests/app/test_inventory.py.)"""

from __future__ import annotations

from typing import Any

from tests.app.test_inventory import inventory_policy
from tests.support.client import AGENT
from tests.support.guard import Guard
from tests.support.upstream import Upstream


def test_policy_check_needs_owners_and_warns_about_uncovered_agents(guard_factory: Any, upstream: Upstream) -> None:
    policy = inventory_policy(upstream.url)
    policy["rules"].append({"id": "ghost", "effect": "allow", "match": {"agent": ["spiffe://nobody/x"]}})
    g: Guard = guard_factory(policy, start=False, subdir="warn")
    out = g.cli("policy", "check")
    assert out.returncode == 0, out.stderr
    assert "ghost" in out.stdout and "spiffe://nobody/x" in out.stdout and "warning" in out.stdout

    del policy["agents"][AGENT]["owner"]
    bad: Guard = guard_factory(policy, start=False, subdir="bad")
    out = bad.cli("policy", "check")
    assert out.returncode == 1
    assert "owner" in out.stderr and "policy.yaml" in out.stderr
