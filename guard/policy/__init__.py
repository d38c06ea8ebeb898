"""Policies: tools, the agent inventory and rules, loaded from `policies/*.yaml` and compiled once.

`load_policies(path)` gives a `PolicySet`; `PolicySet.evaluate(CallContext(...))` gives a `Decision`.
"""

from guard.policy.evaluate import PolicySet, Rule
from guard.policy.load import check_policies, load_policies
from guard.policy.model import (
    ActionSpec,
    AgentEntry,
    CallContext,
    CredentialSpec,
    Decision,
    RateSpec,
    ToolSpec,
)
from guard.policy.testing import CaseResult, run_policy_tests

__all__ = [
    "ActionSpec",
    "AgentEntry",
    "CallContext",
    "CaseResult",
    "CredentialSpec",
    "Decision",
    "PolicySet",
    "RateSpec",
    "Rule",
    "ToolSpec",
    "check_policies",
    "load_policies",
    "run_policy_tests",
]
