"""`guard policy test`: cases in policies/tests/*.yaml pass, fail with a reason, or are rejected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guard.cli.main import main
from guard.errors import ConfigError
from guard.policy import PolicySet, load_policies, run_policy_tests

POLICIES = """\
tools:
  notes:
    kind: http
    upstream: http://127.0.0.1:9101
    actions:
      read:  {method: GET,  path: "/notes/{id}"}
      write: {method: POST, path: "/notes"}
  vault:
    kind: mcp
    upstream: http://127.0.0.1:9102/mcp
agents:
  "spiffe://acme/agent/*": {owner: alice@acme.example, tools: [notes]}
rules:
  - {id: read, effect: allow, match: {tool: notes, action: read}}
  - id: big-write
    effect: step_up
    approvers: finance
    match: {tool: notes, action: write, args: [{path: $.body, len_gt: 3}]}
  - {id: write, effect: allow, match: {tool: notes, action: write, task: {labels: {env: dev}}}}
  - {id: vault, effect: allow, match: {tool: vault}}
"""

AGENT = "spiffe://acme/agent/r"


@pytest.fixture
def policies(tmp_path: Path) -> PolicySet:
    (tmp_path / "p.yaml").write_text(POLICIES)
    return load_policies(tmp_path)


def cases(tmp_path: Path, text: str, name: str = "cases.yaml") -> Path:
    folder = tmp_path / "tests"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_passing_cases(tmp_path: Path, policies: PolicySet) -> None:
    folder = cases(
        tmp_path,
        f"""\
        - name: read
          call: {{agent: "{AGENT}", tool: notes, action: read, args: {{id: "1"}}}}
          expect: allow
          rule: read
        - name: big write
          call: {{agent: "{AGENT}", tool: notes, action: write, args: {{body: long text}}}}
          expect: step_up
        - name: small write in dev
          call:
            agent: "{AGENT}"
            tool: notes
            action: write
            args: {{body: hi}}
            task: {{purpose: x, labels: {{env: dev}}}}
          expect: allow
          rule: write
        """,
    )
    results = run_policy_tests(policies, folder)
    assert [(r.name, r.ok, r.got_effect, r.got_rule, r.message) for r in results] == [
        ("read", True, "allow", "read", ""),
        ("big write", True, "step_up", "big-write", ""),
        ("small write in dev", True, "allow", "write", ""),
    ]
    assert [r.line for r in results] == [1, 5, 8]
    assert all(r.file == str(folder / "cases.yaml") for r in results)


def test_failure_messages_name_the_deciding_rule(tmp_path: Path, policies: PolicySet) -> None:
    folder = cases(
        tmp_path,
        f"""\
        - name: wrong effect
          call: {{agent: "{AGENT}", tool: notes, action: write, args: {{body: long text}}}}
          expect: allow
        - name: nothing matches
          call: {{agent: "{AGENT}", tool: notes, action: write, args: {{body: hi}}}}
          expect: allow
        - name: wrong rule
          call: {{agent: "{AGENT}", tool: notes, action: read}}
          expect: allow
          rule: write
        """,
    )
    results = run_policy_tests(policies, folder)
    assert [r.ok for r in results] == [False, False, False]
    assert [r.message for r in results] == [
        "expected allow, got step_up by rule 'big-write'",
        "expected allow, got deny by no matching rule",
        "expected allow by rule 'write', got allow by rule 'read'",
    ]
    assert results[1].got_rule is None and results[1].expected == "allow"


def test_agent_cap_and_inventory_apply(tmp_path: Path, policies: PolicySet) -> None:
    folder = cases(
        tmp_path,
        f"""\
        - name: vault is outside the agent's cap
          call: {{agent: "{AGENT}", tool: vault, action: get}}
          expect: deny
        - name: task tools narrow further
          call: {{agent: "{AGENT}", tool: notes, action: read, task: {{tools: [vault]}}}}
          expect: allow
        - name: unregistered agent
          call: {{agent: "spiffe://other/x", tool: notes, action: read}}
          expect: allow
        """,
    )
    results = run_policy_tests(policies, folder)
    assert results[0].ok
    assert results[1].message == "expected allow, got deny (tool_not_in_task)"
    assert results[2].message == "expected allow, got deny (unregistered_agent)"


def test_files_run_in_name_order_and_missing_folder_is_empty(tmp_path: Path, policies: PolicySet) -> None:
    one = f"- {{name: n, call: {{agent: '{AGENT}', tool: notes, action: read}}, expect: allow}}\n"
    cases(tmp_path, one.replace("name: n", "name: second"), "b.yaml")
    folder = cases(tmp_path, one.replace("name: n", "name: first"), "a.yaml")
    assert [r.name for r in run_policy_tests(policies, folder)] == ["first", "second"]
    assert run_policy_tests(policies, tmp_path / "none") == []


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("- name: x\n  call: {agent: a, tool: notes, action: read}\n  expect: maybe\n", "[0].expect", 3),
        (
            "- name: x\n  call: {agent: a, tool: notes, action: read, when: now}\n  expect: deny\n",
            "[0].call.when",
            2,
        ),
        (
            "- name: ok\n  call: {agent: a, tool: notes, action: read}\n  expect: deny\n"
            "- name: x\n  call: {agent: a, tool: nope, action: read}\n  expect: deny\n",
            "[1].call.tool",
            5,
        ),
        ("- name: x\n  call: {agent: a, tool: notes, action: nope}\n  expect: deny\n", "[0].call.action", 2),
        (
            "- name: x\n  call: {agent: a, tool: notes, action: read}\n  expect: deny\n  rule: ghost\n",
            "[0].rule",
            4,
        ),
        ("name: x\n", "", 1),
        ("- name: x\n  call: {agent: a, tool: notes\n", "", 3),
    ],
)
def test_bad_case_files(tmp_path: Path, policies: PolicySet, text: str, key: str, line: int) -> None:
    folder = cases(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        run_policy_tests(policies, folder)
    assert err.value.file == str(folder / "cases.yaml")
    assert (err.value.key, err.value.line) == (key, line)


LOOPS = POLICIES + """\
  - {id: notes-recurses, effect: allow, match: {tool: notes, action: read, chain: {caller: notes, loop: true}}}
"""


def test_chain_depth_limit_comes_before_every_rule_the_loop_rule_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in the guard: a chain deeper than limits.max_chain_depth is refused (chain_too_deep)
    even where a loop rule would allow it; `guard policy test` takes the limit from the config."""
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.yaml").write_text(LOOPS)
    folder = cases(
        pol,
        f"""\
        - name: a loop the rule allows, within the limit
          call: {{agent: "{AGENT}", tool: notes, action: read, chain: [notes]}}
          expect: allow
          rule: notes-recurses
        - name: the same loop one tool deeper than the limit
          call: {{agent: "{AGENT}", tool: notes, action: read, chain: [notes, notes]}}
          expect: allow
        - name: a loop no rule allows, over the limit
          call: {{agent: "{AGENT}", tool: notes, action: write, chain: [notes, notes]}}
          expect: allow
        """,
    )
    results = run_policy_tests(load_policies(pol), folder, max_chain_depth=1)
    assert [r.message for r in results] == [
        "",
        "expected allow, got deny (chain_too_deep)",
        "expected allow, got deny (chain_too_deep)",
    ]
    config = tmp_path / "guard.yaml"
    config.write_text(f"policies: {pol}\nlimits: {{max_chain_depth: 1}}\naudit: {{dir: {tmp_path / 'a'}}}\n")
    assert main(["policy", "test", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "got deny (chain_too_deep)" in out and "1 passed, 2 failed" in out


def test_a_case_may_say_the_call_is_unusual(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES.replace(
        "rules:\n", "rules:\n  - {id: odd, effect: deny, match: {agent: {unusual: true, sub: ['spiffe://acme/*']}}}\n"))
    folder = cases(
        tmp_path,
        f"""\
        - name: usual read
          call: {{agent: "{AGENT}", tool: notes, action: read, args: {{id: "1"}}}}
          expect: allow
          rule: read
        - name: unusual read
          call: {{agent: "{AGENT}", tool: notes, action: read, args: {{id: "1"}}, unusual: true}}
          expect: deny
          rule: odd
        """,
    )
    results = run_policy_tests(load_policies(tmp_path), folder)
    assert [(r.name, r.ok) for r in results] == [("usual read", True), ("unusual read", True)]
