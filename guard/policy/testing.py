"""`guard policy test`: run the cases in `policies/tests/*.yaml` against a PolicySet.

Each file is a YAML list of cases:

    - name: researcher may read notes
      call: {agent: spiffe://acme/agent/r, tool: notes, action: read, args: {id: "1"},
             task: {purpose: weekly report, labels: {env: prod}, tools: [notes]},
             chain: [], history: [vault.read], unusual: false}   # unusual: for match.agent.unusual
      expect: allow            # allow | deny | step_up
      rule: notes-read         # optional: the rule that must decide

Content and tool integrity: `task: {data: [private, untrusted]}` sets the task's data labels, and
`content: {args: [secret], result: [pii], uninspected: true, flow: true}` the call's findings (kinds
in its arguments and its result), whether it was cut at `inspect.max_bytes`, and whether its
arguments carry a value the task received (`flow`: refused as exfiltration unless the deciding
rule says `content: {allow_flow: true}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guard.domain import Effect
from guard.errors import ConfigError
from guard.policy.evaluate import PolicySet
from guard.policy.model import CallContext, Decision, Names, OptNames
from guard.yamlfile import LineMap, Loc, format_key, read_yaml, validation_error

__all__ = ["CaseResult", "run_policy_tests"]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseTask(_Schema):
    purpose: str = ""
    labels: dict[str, str] = {}
    tools: OptNames = None
    data: Names = []  # the task's data labels


class CaseContent(_Schema):
    args: Names = []  # finding kinds in the arguments
    result: Names = []  # finding kinds in the result
    uninspected: bool = False
    flow: bool = False  # the arguments carry a value the task received


class CaseCall(_Schema):
    agent: str
    tool: str
    action: str
    args: Any = Field(default_factory=dict)
    task: CaseTask = CaseTask()
    chain: Names = []
    history: Names = []
    content: CaseContent = CaseContent()
    unusual: bool = False  # the call is unusual for its agent's baseline (guard.signals.baseline)


class Case(_Schema):
    name: str
    call: CaseCall
    expect: Effect
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    line: int | None
    name: str
    ok: bool
    expected: Effect
    got_effect: Effect
    got_rule: str | None
    message: str = ""


def _fail(file: str, lines: LineMap, loc: Loc, reason: str) -> ConfigError:
    return ConfigError(file, format_key(loc), reason, lines.line(loc))


def _read_cases(path: Path) -> tuple[list[Case], LineMap]:
    data, lines = read_yaml(path)
    if data is None:
        return [], lines
    if not isinstance(data, list):
        raise ConfigError(str(path), "", "a policy test file must be a YAML list of cases", 1)
    cases: list[Case] = []
    for i, raw in enumerate(data):
        try:
            cases.append(Case.model_validate(raw))
        except ValidationError as exc:
            raise validation_error(str(path), lines, exc, prefix=(i,)) from None
    return cases, lines


def _check_case(policies: PolicySet, file: str, lines: LineMap, i: int, case: Case) -> None:
    tool = policies.tools.get(case.call.tool)
    if tool is None:
        raise _fail(file, lines, (i, "call", "tool"), f"unknown tool {case.call.tool!r}")
    if tool.kind == "http" and case.call.action not in tool.action_names():
        raise _fail(file, lines, (i, "call", "action"), f"unknown action {case.call.action!r}")
    if case.rule is not None and all(r.id != case.rule for r in policies.rules):
        raise _fail(file, lines, (i, "rule"), f"no rule has id {case.rule!r}")


def _decide(policies: PolicySet, call: CaseCall, max_chain_depth: int | None = None) -> Decision:
    """Decide like the guard does: the chain depth limit first (before any rule, the loop rule
    included), the inventory, then the task's tools capped by the entry."""
    if max_chain_depth is not None and len(call.chain) > max_chain_depth:
        return Decision("deny", None, "chain_too_deep")
    entry = policies.agent_entry(call.agent)
    if policies.has_inventory and entry is None:
        return Decision("deny", None, "no_rule")
    allowed = frozenset(call.task.tools) if call.task.tools is not None else None
    if entry is not None and entry.tools is not None:
        cap = frozenset(entry.tools)
        allowed = cap if allowed is None else allowed & cap
    ctx = CallContext(
        agent=call.agent,
        tool=call.tool,
        action=call.action,
        args=call.args,
        task_purpose=call.task.purpose,
        task_labels=call.task.labels,
        allowed_tools=allowed,
        chain=tuple(call.chain),
        history=frozenset(call.history),
        task_data=frozenset(call.task.data),
        content_args=frozenset(call.content.args),
        content_result=frozenset(call.content.result),
        uninspected=call.content.uninspected,
        flow=call.content.flow,
        unusual=call.unusual,
    )
    decision = policies.evaluate(ctx)
    if decision.effect != "deny" and call.content.flow and not decision.allow_flow:
        return Decision("deny", None, "exfiltration")
    if decision.effect != "deny" and call.content.result:
        denial = policies.result_denial(ctx)
        if denial is not None:
            return Decision("deny", denial.id, "rule")
    return decision


def _describe(effect: str, rule: str | None, reason: str) -> str:
    if rule is not None:
        return f"{effect} by rule {rule!r}"
    return f"{effect} by no matching rule" if reason == "no_rule" else f"{effect} ({reason})"


def _result(file: str, line: int | None, case: Case, decision: Decision, unregistered: bool) -> CaseResult:
    ok = decision.effect == case.expect and (case.rule is None or case.rule == decision.rule_id)
    message = ""
    if not ok:
        reason = "unregistered_agent" if unregistered else decision.reason
        want = case.expect if case.rule is None else f"{case.expect} by rule {case.rule!r}"
        message = f"expected {want}, got {_describe(decision.effect, decision.rule_id, reason)}"
    return CaseResult(file, line, case.name, ok, case.expect, decision.effect, decision.rule_id, message)


def run_file(policies: PolicySet, path: Path, max_chain_depth: int | None = None) -> list[CaseResult]:
    cases, lines = _read_cases(path)
    results: list[CaseResult] = []
    for i, case in enumerate(cases):
        _check_case(policies, str(path), lines, i, case)
        unregistered = policies.has_inventory and policies.agent_entry(case.call.agent) is None
        decision = _decide(policies, case.call, max_chain_depth)
        results.append(_result(str(path), lines.line((i,)), case, decision, unregistered))
    return results


def run_policy_tests(policies: PolicySet, tests_dir: Path, max_chain_depth: int | None = None) -> list[CaseResult]:
    """Run every `*.yaml` case file in `tests_dir` (sorted by name); a missing folder has no cases.
    `max_chain_depth` (the config's `limits.max_chain_depth`) refuses a deeper chain as the guard does."""
    tests_dir = Path(tests_dir)
    files = [tests_dir] if tests_dir.is_file() else sorted(tests_dir.glob("*.yaml"))
    return [result for f in files for result in run_file(policies, f, max_chain_depth)]
