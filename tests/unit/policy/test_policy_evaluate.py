"""Evaluating calls: combining, agents, task, chain, history, rates, loops, could_allow, actions."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from guard.policy import CallContext, CredentialSpec, PolicySet, ToolSpec, load_policies
from guard.policy.model import ActionSpec
from tests.support.policies import tools_yaml

TOOLS = tools_yaml(research={"kind": "mcp", "upstream": "http://127.0.0.1:9103/mcp"})

AGENT = "spiffe://acme/agent/researcher"


def load(tmp_path: Path, rules: str, tools: str = TOOLS) -> PolicySet:
    (tmp_path / "tools.yaml").write_text(textwrap.dedent(tools))
    (tmp_path / "rules.yaml").write_text("rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))
    return load_policies(tmp_path)


def ctx(tool: str = "notes", action: str = "read", args: Any = None, **kw: Any) -> CallContext:
    return CallContext(agent=kw.pop("agent", AGENT), tool=tool, action=action, args=args or {}, **kw)


def test_no_rule_is_deny(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: w, effect: allow, match: {tool: notes, action: write}}\n")
    d = p.evaluate(ctx())
    assert (d.effect, d.rule_id, d.reason) == ("deny", None, "no_rule")


def test_allow_by_rule(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: r, effect: allow, match: {tool: notes, action: read}}\n")
    d = p.evaluate(ctx())
    assert (d.effect, d.rule_id, d.reason) == ("allow", "r", "rule")


COMBINED = [
    "- {id: a, effect: allow, match: {tool: notes}}\n",
    "- {id: s, effect: step_up, approvers: finance, match: {tool: notes, action: read}}\n",
    "- {id: d, effect: deny, match: {agent: 'spiffe://acme/*'}}\n",
]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (2, 0, 1)])
def test_deny_beats_step_up_beats_allow_in_any_order(tmp_path: Path, order: tuple[int, ...]) -> None:
    p = load(tmp_path, "".join(COMBINED[i] for i in order))
    assert p.evaluate(ctx()).rule_id == "d"
    assert p.evaluate(ctx(agent="other")).rule_id == "s"
    assert p.evaluate(ctx(agent="other", action="write")).rule_id == "a"


def test_step_up_carries_approvers_and_count(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - id: big
          effect: step_up
          approvers: [finance, security, finance]
          approvals_required: 2
          credential: {ttl_s: 15}
          audit_args: full
          match: {tool: notes}
        """,
    )
    d = p.evaluate(ctx())
    assert d.effect == "step_up"
    assert d.approvers == ("finance", "security")
    assert d.approvals_required == 2
    assert d.credential_ttl_s == 15
    assert d.audit_args == "full"


def test_first_rule_of_winning_effect_decides(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: first, effect: allow, match: {tool: notes}, credential: {ttl_s: 5}}
        - {id: second, effect: allow, match: {tool: notes, action: read}, credential: {ttl_s: 9}}
        """,
    )
    d = p.evaluate(ctx())
    assert (d.rule_id, d.credential_ttl_s, d.audit_args) == ("first", 5, "digest")


def test_rates_of_every_matching_allow_and_step_up(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: a1, effect: allow, match: {tool: notes}, rate: {calls: 10, per_s: 60}}
        - {id: a2, effect: allow, match: {action: read}}
        - {id: s1, effect: step_up, approvers: x, match: {tool: notes}, rate: {calls: 2, per_s: 1.5}}
        - {id: other, effect: allow, match: {tool: vault}, rate: {calls: 1, per_s: 1}}
        """,
    )
    d = p.evaluate(ctx())
    assert d.rule_id == "s1"
    assert d.rates == (("a1", 10, 60.0), ("s1", 2, 1.5))


def test_deny_has_no_rates(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: a1, effect: allow, match: {tool: notes}, rate: {calls: 10, per_s: 60}}
        - {id: d, effect: deny, match: {tool: notes}}
        """,
    )
    assert p.evaluate(ctx()).rates == ()


def test_agent_globs_and_lists(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        "- {id: r, effect: allow, match: {agent: ['spiffe://acme/agent/*', 'exact-bot'], tool: notes}}\n",
    )
    assert p.evaluate(ctx(agent="spiffe://acme/agent/x")).effect == "allow"
    assert p.evaluate(ctx(agent="exact-bot")).effect == "allow"
    assert p.evaluate(ctx(agent="spiffe://other/agent/x")).effect == "deny"
    assert p.evaluate(ctx(agent="exact-bot2")).effect == "deny"


def test_action_star_and_lists(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: star, effect: allow, match: {tool: vault, action: "*"}}
        - {id: list, effect: allow, match: {tool: [notes], action: [write]}}
        """,
    )
    assert p.evaluate(ctx("vault", "read")).rule_id == "star"
    assert p.evaluate(ctx("notes", "write")).rule_id == "list"
    assert p.evaluate(ctx("notes", "read")).effect == "deny"


def test_mcp_action_names_are_free(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: r, effect: allow, match: {tool: research, action: search}}\n")
    assert p.evaluate(ctx("research", "search")).effect == "allow"
    assert p.evaluate(ctx("research", "delete_all")).effect == "deny"


def test_task_purpose_and_labels(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        "- {id: r, effect: allow, match: {tool: notes, task: {purpose: '*report*', labels: {env: prod*}}}}\n",
    )
    assert p.evaluate(ctx(task_purpose="weekly report", task_labels={"env": "prod-eu"})).effect == "allow"
    assert p.evaluate(ctx(task_purpose="weekly report", task_labels={"env": "dev"})).effect == "deny"
    assert p.evaluate(ctx(task_purpose="weekly report")).effect == "deny"
    assert p.evaluate(ctx(task_purpose="chat", task_labels={"env": "prod"})).effect == "deny"


def test_args_conditions_all_must_hold(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - id: big
          effect: step_up
          approvers: finance
          match:
            tool: notes
            action: write
            args:
              - {path: "$.body", len_gt: 5}
              - {path: "$.tags[*]", in: [public, internal]}
        - {id: w, effect: allow, match: {tool: notes, action: write}}
        """,
    )
    big = {"body": "x" * 10, "tags": ["public"]}
    assert p.evaluate(ctx(action="write", args=big)).rule_id == "big"
    assert p.evaluate(ctx(action="write", args={**big, "tags": ["secret"]})).rule_id == "w"
    assert p.evaluate(ctx(action="write", args={**big, "body": "x"})).rule_id == "w"


def test_chain_caller_and_depth(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: via-research, effect: allow, match: {tool: notes, chain: {caller: research, depth_lte: 2}}}
        - {id: direct, effect: allow, match: {tool: vault, chain: {depth_eq: 0}}}
        - {id: deep, effect: allow, match: {tool: vault, chain: {depth_gt: 1, depth_lt: 3}}}
        - {id: mid, effect: allow, match: {tool: vault, chain: {depth_gte: 1, depth_lte: 1}}}
        """,
    )
    assert p.evaluate(ctx(chain=("research",))).rule_id == "via-research"
    assert p.evaluate(ctx(chain=("vault", "research"))).rule_id == "via-research"
    assert p.evaluate(ctx(chain=("vault", "vault", "research"))).effect == "deny"
    assert p.evaluate(ctx(chain=("research", "vault"))).effect == "deny"
    assert p.evaluate(ctx()).effect == "deny"
    assert p.evaluate(ctx("vault")).rule_id == "direct"
    assert p.evaluate(ctx("vault", chain=("notes",))).rule_id == "mid"
    assert p.evaluate(ctx("vault", chain=("notes", "research"))).rule_id == "deep"
    assert p.evaluate(ctx("vault", chain=("notes", "research", "notes"))).effect == "deny"


def test_loop_needs_a_loop_rule(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: any, effect: allow, match: {tool: notes}}\n")
    assert p.evaluate(ctx(chain=("research",))).effect == "allow"
    d = p.evaluate(ctx(chain=("notes", "research")))
    assert (d.effect, d.rule_id, d.reason) == ("deny", None, "chain_loop")


def test_loop_rule_allows_only_loops(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: loop, effect: allow, match: {tool: notes, chain: {loop: true}}}\n")
    assert p.evaluate(ctx(chain=("notes",))).rule_id == "loop"
    assert p.evaluate(ctx(chain=("research",))).reason == "no_rule"


def test_loop_deny_keeps_its_rule(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: loop, effect: allow, match: {tool: notes, chain: {loop: true}}}
        - {id: no-research, effect: deny, match: {chain: {caller: research}}}
        """,
    )
    d = p.evaluate(ctx(chain=("notes", "research")))
    assert (d.effect, d.rule_id, d.reason) == ("deny", "no-research", "rule")


def test_history_called_and_not_called(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - {id: after-vault, effect: allow, match: {tool: notes, history: {called: [vault.read, notes.write]}}}
        - {id: fresh, effect: allow, match: {tool: notes, action: write, history: {not_called: [vault.read]}}}
        """,
    )
    assert p.evaluate(ctx(history=frozenset({"vault.read"}))).rule_id == "after-vault"
    assert p.evaluate(ctx(history=frozenset({"notes.write"}))).rule_id == "after-vault"
    assert p.evaluate(ctx(history=frozenset({"notes.read"}))).effect == "deny"
    assert p.evaluate(ctx(action="write")).rule_id == "fresh"
    assert p.evaluate(ctx(action="write", history=frozenset({"vault.read"}))).rule_id == "after-vault"
    assert p.evaluate(ctx(action="write", history=frozenset({"vault.read", "x.y"}))).rule_id == "after-vault"
    assert p.evaluate(ctx(action="write", history=frozenset({"x.y"}))).rule_id == "fresh"


def test_tool_not_in_task(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: r, effect: allow, match: {tool: notes}}\n")
    d = p.evaluate(ctx(allowed_tools=frozenset({"vault"})))
    assert (d.effect, d.rule_id, d.reason) == ("deny", None, "tool_not_in_task")
    assert p.evaluate(ctx(allowed_tools=frozenset({"notes"}))).effect == "allow"


def test_rules_without_tool_apply_to_every_tool(tmp_path: Path) -> None:
    p = load(tmp_path, "- {id: all, effect: allow, match: {agent: '*'}}\n")
    assert p.evaluate(ctx("vault", "read")).rule_id == "all"
    assert p.evaluate(ctx("research", "anything")).rule_id == "all"
    assert p.evaluate(ctx("unknown", "x")).rule_id == "all"


def test_agent_entry_exact_before_glob(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        textwrap.dedent(
            """
            agents:
              "spiffe://acme/*": {owner: ops@acme.example}
              "spiffe://acme/bot": {owner: bob@acme.example, tools: []}
            """
        )
    )
    p = load_policies(tmp_path)
    assert p.has_inventory
    bot = p.agent_entry("spiffe://acme/bot")
    assert bot is not None and bot.owner == "bob@acme.example" and bot.tools == ()
    other = p.agent_entry("spiffe://acme/other")
    assert other is not None and other.owner == "ops@acme.example"
    assert p.agent_entry("spiffe://else/x") is None


def test_could_allow(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        """
        - id: s
          effect: step_up
          approvers: x
          match: {tool: research, action: write, args: [{path: $.a, eq: 1}]}
        - id: r
          effect: allow
          match: {tool: research, action: [search, delete], history: {called: [vault.read]}}
        - {id: d, effect: deny, match: {tool: research, action: delete}}
        - {id: dd, effect: deny, match: {tool: research, action: search, args: [{path: $.q, eq: x}]}}
        - {id: t, effect: allow, match: {tool: research, action: report, task: {purpose: "*report*"}}}
        """,
    )
    assert p.could_allow(AGENT, "research", "write", "", {}, None, ())
    assert p.could_allow(AGENT, "research", "search", "", {}, None, ())
    assert not p.could_allow(AGENT, "research", "delete", "", {}, None, ())
    assert not p.could_allow(AGENT, "research", "other", "", {}, None, ())
    assert not p.could_allow(AGENT, "research", "search", "", {}, frozenset({"notes"}), ())
    assert p.could_allow(AGENT, "research", "report", "a report", {}, None, ())
    assert not p.could_allow(AGENT, "research", "report", "chat", {}, None, ())
    assert not p.could_allow(AGENT, "research", "search", "", {}, None, ("research",))


def test_match_action_templates_and_methods() -> None:
    tool = ToolSpec(
        name="notes",
        kind="http",
        upstream="http://x",
        credential=CredentialSpec(),
        actions=(
            ActionSpec("read", "get", "/notes/{id}"),
            ActionSpec("any-note", "GET", "/notes/{id}"),
            ActionSpec("comment", "POST", "/notes/{id}/comments/{cid}"),
            ActionSpec("list", "GET", "/notes"),
        ),
    )
    assert tool.match_action("GET", "/notes/42") == ("read", {"id": "42"})
    assert tool.match_action("get", "/notes/42") == ("read", {"id": "42"})
    assert tool.match_action("POST", "/notes/a/comments/b") == ("comment", {"id": "a", "cid": "b"})
    assert tool.match_action("GET", "/notes") == ("list", {})
    assert tool.match_action("POST", "/notes/42") is None
    assert tool.match_action("GET", "/notes/42/") is None
    assert tool.match_action("GET", "/notes/") is None
    assert tool.match_action("GET", "/notes/4/2") is None
    assert tool.match_action("GET", "/notes/42x/comments/1") is None
    assert tool.match_action("GET", "/notesx") is None
    assert tool.match_action("GET", "/x/notes") is None


def test_template_literals_are_not_regex() -> None:
    tool = ToolSpec("t", "http", "http://x", CredentialSpec(), (ActionSpec("a", "GET", "/v1.0/{id}"),))
    assert tool.match_action("GET", "/v1.0/7") == ("a", {"id": "7"})
    assert tool.match_action("GET", "/v1x0/7") is None
