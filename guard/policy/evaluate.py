"""Compiled rules and the PolicySet that evaluates a call against them.

Combining: a matching deny beats step_up, which beats allow; nothing matching is a deny.
A loop (the tool already in the chain) may only be allowed by a rule with `chain.loop: true`.
Rules are indexed by (tool, action) at load, so a call only looks at the rules that name it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from guard.domain import Effect
from guard.policy.conditions import Condition
from guard.policy.model import AgentEntry, CallContext, Decision, RateSpec, ToolSpec

__all__ = ["ChainMatch", "ContentMatch", "Globs", "HistoryMatch", "PolicySet", "Rule", "TaskMatch"]

_GLOB_CHARS = frozenset("*?[")
Rates = tuple[tuple[str, int, float], ...]  # (rule id, calls, per seconds) of the rate limits that apply


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


@dataclass(frozen=True, slots=True)
class Globs:
    """Patterns split into exact names (a set lookup) and real globs (fnmatchcase)."""

    exact: frozenset[str]
    globs: tuple[str, ...]

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> Globs:
        return cls(
            frozenset(p for p in patterns if not is_glob(p)),
            tuple(p for p in patterns if is_glob(p)),
        )

    def match(self, value: str) -> bool:
        return value in self.exact or any(fnmatchcase(value, g) for g in self.globs)


@dataclass(frozen=True, slots=True)
class TaskMatch:
    purpose: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def holds(self, purpose: str, labels: Mapping[str, str]) -> bool:
        if self.purpose is not None and not fnmatchcase(purpose, self.purpose):
            return False
        for key, pattern in self.labels:
            value = labels.get(key)
            if value is None or not fnmatchcase(value, pattern):
                return False
        return True


@dataclass(frozen=True, slots=True)
class ChainMatch:
    callers: frozenset[str] | None = None
    depth_lte: int | None = None
    depth_lt: int | None = None
    depth_gte: int | None = None
    depth_gt: int | None = None
    depth_eq: int | None = None
    loop: bool | None = None

    def holds(self, ctx: CallContext) -> bool:
        if self.callers is not None and ctx.caller not in self.callers:
            return False
        if self.loop is not None and self.loop != ctx.is_loop:
            return False
        return self._depth_holds(ctx.depth)

    def _depth_holds(self, depth: int) -> bool:
        return not (
            (self.depth_lte is not None and depth > self.depth_lte)
            or (self.depth_lt is not None and depth >= self.depth_lt)
            or (self.depth_gte is not None and depth < self.depth_gte)
            or (self.depth_gt is not None and depth <= self.depth_gt)
            or (self.depth_eq is not None and depth != self.depth_eq)
        )


@dataclass(frozen=True, slots=True)
class HistoryMatch:
    called: frozenset[str] | None = None
    not_called: frozenset[str] | None = None

    def holds(self, history: frozenset[str]) -> bool:
        if self.called is not None and not (self.called & history):
            return False
        return not (self.not_called is not None and self.not_called & history)


@dataclass(frozen=True, slots=True)
class ContentMatch:
    """`match.content` and `match.task.data` (content and tool integrity, guard.content): `args` and
    `result` hold when a listed finding kind is in the arguments or the result; `data` when every
    listed label is on the task; `allow_flow: true` only for a call carrying a remembered value."""

    args: frozenset[str] | None = None
    result: frozenset[str] | None = None
    uninspected: bool | None = None
    allow_flow: bool | None = None
    data: frozenset[str] | None = None

    def holds(self, ctx: CallContext) -> bool:
        if self.data is not None and not self.data <= ctx.task_data:
            return False
        if self.args is not None and not self.args & ctx.content_args:
            return False
        if self.result is not None and not self.result & ctx.content_result:
            return False
        if self.uninspected is not None and self.uninspected != ctx.uninspected:
            return False
        return not (self.allow_flow is not None and self.allow_flow != ctx.flow)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. `tools`/`actions` of None mean any."""

    id: str
    effect: Effect
    file: str
    line: int | None
    order: int
    agents: Globs | None = None
    tools: frozenset[str] | None = None
    actions: frozenset[str] | None = None
    args: tuple[Condition, ...] = ()
    task: TaskMatch | None = None
    chain: ChainMatch | None = None
    history: HistoryMatch | None = None
    approvers: tuple[str, ...] = ()
    approvals_required: int = 1
    credential_ttl_s: int | None = None
    rate: RateSpec | None = None
    audit_args: Literal["digest", "full"] = "digest"
    content: ContentMatch | None = None
    unusual: bool | None = None  # match.agent.unusual: the call is (un)usual for its agent's baseline

    @property
    def allows_loop(self) -> bool:
        return self.chain is not None and self.chain.loop is True

    @property
    def unconditional(self) -> bool:
        """True when the rule looks at neither args nor history (used by could_allow)."""
        return not self.args and self.history is None and self.content is None and self.unusual is None

    def matches(self, ctx: CallContext, *, with_call: bool = True) -> bool:
        """Whether the rule holds; `with_call=False` ignores args and history."""
        if self.agents is not None and not self.agents.match(ctx.agent):
            return False
        if self.task is not None and not self.task.holds(ctx.task_purpose, ctx.task_labels):
            return False
        if self.chain is not None and not self.chain.holds(ctx):
            return False
        if not with_call:
            return True
        if self.unusual is not None and self.unusual != ctx.unusual:
            return False
        if self.history is not None and not self.history.holds(ctx.history):
            return False
        if self.content is not None and not self.content.holds(ctx):
            return False
        return all(c.holds(ctx.args) for c in self.args)


class _Winners:
    """The first matching rule of each effect, and the rates of every matching allow/step_up."""

    def __init__(self) -> None:
        self.first: dict[Effect, Rule] = {}
        self.rates: list[tuple[str, int, float]] = []

    def add(self, rule: Rule) -> None:
        self.first.setdefault(rule.effect, rule)
        if rule.effect != "deny" and rule.rate is not None:
            self.rates.append((rule.id, rule.rate.calls, rule.rate.per_s))

    def decision(self, loop: bool, decided_by: Callable[[Rule, Rates], Decision]) -> Decision:
        for effect in ("deny", "step_up", "allow"):
            rule = self.first.get(effect)
            if rule is not None:
                return decided_by(rule, tuple(self.rates) if effect != "deny" else ())
        return Decision("deny", None, "chain_loop" if loop else "no_rule")


def _decision(rule: Rule, rates: Rates) -> Decision:
    return Decision(
        effect=rule.effect,
        rule_id=rule.id,
        reason="rule",
        approvers=rule.approvers if rule.effect == "step_up" else (),
        approvals_required=rule.approvals_required,
        credential_ttl_s=rule.credential_ttl_s if rule.effect != "deny" else None,
        rates=rates,
        audit_args=rule.audit_args,
        allow_flow=rule.content is not None and rule.content.allow_flow is True,
        content_args=rule.content is not None and rule.content.args is not None,
    )


_ANY = ""  # index key for "any other tool" / "any other action"


def _build_index(rules: tuple[Rule, ...]) -> dict[tuple[str, str], tuple[Rule, ...]]:
    tool_keys = {_ANY} | {t for r in rules for t in (r.tools or ())}
    action_keys = {_ANY} | {a for r in rules for a in (r.actions or ())}
    index: dict[tuple[str, str], tuple[Rule, ...]] = {}
    for tool in tool_keys:
        for action in action_keys:
            index[(tool, action)] = tuple(
                r
                for r in rules
                if (r.tools is None or tool in r.tools) and (r.actions is None or action in r.actions)
            )
    return index


class PolicySet:
    """Tools, the agent inventory and compiled rules from one policies folder."""

    def __init__(
        self,
        tools: Mapping[str, ToolSpec],
        agents: tuple[AgentEntry, ...],
        rules: tuple[Rule, ...],
        source: str = "",
    ) -> None:
        self.tools: Mapping[str, ToolSpec] = dict(tools)
        self.agents = agents
        self.rules = rules
        self.source = source
        self._index = _build_index(rules)
        self._tool_keys = frozenset(t for t, _ in self._index)
        self._action_keys = frozenset(a for _, a in self._index)
        self._exact_agents = {a.pattern: a for a in reversed(agents) if not is_glob(a.pattern)}
        self._glob_agents = tuple(a for a in agents if is_glob(a.pattern))
        self._glob_hits: dict[str, AgentEntry | None] = {}
        # (id of one of this set's rules, rates) -> the decision: immutable, so built once per pair
        self._decisions: dict[tuple[int, Rates], Decision] = {}

    def lifetimes(self) -> tuple[float, int]:
        """The longest tool timeout and the longest credential lifetime these policies give."""
        ttls = [t.credential.ttl_s or 0 for t in self.tools.values()]
        ttls += [r.credential_ttl_s or 0 for r in self.rules]
        return max((t.timeout_s for t in self.tools.values()), default=30.0), max(ttls, default=0)

    @property
    def has_inventory(self) -> bool:
        return bool(self.agents)

    def agent_entry(self, sub: str) -> AgentEntry | None:
        """The entry naming `sub` exactly, else the first glob entry matching it."""
        exact = self._exact_agents.get(sub)
        if exact is not None:
            return exact
        if sub in self._glob_hits:  # the set never changes: match each sub against the globs once
            return self._glob_hits[sub]
        entry = next((a for a in self._glob_agents if a.matches(sub)), None)
        if len(self._glob_hits) < 10_000:
            self._glob_hits[sub] = entry
        return entry

    def candidates(self, tool: str, action: str) -> tuple[Rule, ...]:
        """The rules that could apply to this tool and action, in file order."""
        tool_key = tool if tool in self._tool_keys else _ANY
        action_key = action if action in self._action_keys else _ANY
        return self._index[(tool_key, action_key)]

    def evaluate(self, ctx: CallContext) -> Decision:
        if ctx.allowed_tools is not None and ctx.tool not in ctx.allowed_tools:
            return Decision("deny", None, "tool_not_in_task")
        loop = ctx.is_loop
        winners = _Winners()
        for rule in self.candidates(ctx.tool, ctx.action):
            if loop and rule.effect != "deny" and not rule.allows_loop:
                continue
            if rule.matches(ctx):
                if rule.effect == "deny":
                    return self._decided_by(rule, ())
                winners.add(rule)
        return winners.decision(loop, self._decided_by)

    def result_denial(self, ctx: CallContext) -> Rule | None:
        """The first deny rule with `content.result` that holds for the call's result findings."""
        for rule in self.candidates(ctx.tool, ctx.action):
            if rule.effect == "deny" and rule.content is not None and rule.content.result is not None \
                    and rule.matches(ctx):
                return rule
        return None

    def _decided_by(self, rule: Rule, rates: Rates) -> Decision:
        decision = self._decisions.get((id(rule), rates))
        if decision is None:
            if len(self._decisions) >= 10_000:  # combinations of rates: stay bounded
                self._decisions.clear()
            decision = self._decisions[(id(rule), rates)] = _decision(rule, rates)
        return decision

    def could_allow(
        self,
        agent: str,
        tool: str,
        action: str,
        task_purpose: str = "",
        task_labels: Mapping[str, str] | None = None,
        allowed_tools: frozenset[str] | None = None,
        chain: tuple[str, ...] = (),
    ) -> bool:
        """Whether some allow/step_up rule could match, ignoring args and history,
        and no deny that ignores args and history matches (for MCP tools/list)."""
        if allowed_tools is not None and tool not in allowed_tools:
            return False
        ctx = CallContext(agent, tool, action, None, task_purpose, task_labels or {}, allowed_tools, chain)
        possible = False
        for rule in self.candidates(tool, action):
            if not rule.matches(ctx, with_call=False):
                continue
            if rule.effect == "deny":
                if rule.unconditional:
                    return False
            elif not ctx.is_loop or rule.allows_loop:
                possible = True
        return possible
