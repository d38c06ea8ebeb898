"""Content and tool integrity in policies: the trifecta rule, content matches and flows, decided the
same way by `guard policy test` cases (task data labels and content findings set in the case)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guard.errors import ConfigError
from guard.policy import load_policies, run_policy_tests

POLICIES = """\
tools:
  notes: {kind: http, upstream: "http://127.0.0.1:9101", data: {returns: [private]},
          actions: {read: {method: GET, path: "/notes/{id}"}}}
  mail:  {kind: http, upstream: "http://127.0.0.1:9102", data: {egress: external},
          actions: {send: {method: POST, path: "/send"}}}
  crm:   {kind: mcp, upstream: "http://127.0.0.1:9103/mcp", redact: [pii]}
rules:
  - {id: no-secrets-out, effect: deny, match: {content: {args: [secret]}}}
  - {id: no-pii-back, effect: deny, match: {tool: crm, content: {result: [pii]}}}
  - id: trifecta
    effect: step_up
    approvers: security
    match: {tool: {egress: external}, task: {data: [private, untrusted]}}
  - {id: board, effect: allow, match: {tool: mail, args: [{path: $.to, eq: board@acme.example}],
                                       content: {allow_flow: true}}}
  - {id: work, effect: allow, match: {agent: ["*"]}}
"""

CASES = """\
- name: mail with nothing read
  call: {agent: a, tool: mail, action: send}
  expect: allow
  rule: work
- name: the lethal trifecta
  call: {agent: a, tool: mail, action: send, task: {data: [private, untrusted, pii]}}
  expect: step_up
  rule: trifecta
- name: private alone is not the trifecta
  call: {agent: a, tool: mail, action: send, task: {data: [private]}}
  expect: allow
- name: a secret in the arguments
  call: {agent: a, tool: notes, action: read, content: {args: [secret, pii]}}
  expect: deny
  rule: no-secrets-out
- name: pii in a crm result
  call: {agent: a, tool: crm, action: lookup, content: {result: [pii]}}
  expect: deny
  rule: no-pii-back
- name: a remembered value leaving
  call: {agent: a, tool: mail, action: send, content: {flow: true}}
  expect: deny
- name: a remembered value leaving where a rule allows the flow
  call: {agent: a, tool: mail, action: send, args: {to: board@acme.example}, content: {flow: true}}
  expect: allow
  rule: board
"""


def test_policy_test_cases_set_task_data_and_findings(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "content.yaml").write_text(CASES)
    results = run_policy_tests(load_policies(tmp_path), tmp_path / "tests")
    assert [(r.name, r.ok, r.message) for r in results if not r.ok] == []
    assert len(results) == 7
    policies = load_policies(tmp_path)
    assert policies.tools["crm"].pin == "tofu" and policies.tools["notes"].pin == "off"
    trifecta = next(r for r in policies.rules if r.id == "trifecta")
    assert trifecta.tools == frozenset({"mail"})


@pytest.mark.parametrize(("text", "key"), [
    ("rules: [{id: x, effect: deny, match: {content: {args: [password]}}}]", "rules[0].match.content.args[0]"),
    ("tools: {t: {kind: http, upstream: 'http://h', pin: tofu, actions: {a: {method: GET, path: /}}}}",
     "tools.t.pin"),
    ("tools: {t: {kind: mcp, upstream: 'http://h', pin: {sha256: {read: abc}}}}", "tools.t.pin.sha256.read"),
    ("tools: {t: {kind: mcp, upstream: 'http://h', redact: [email]}}", "tools.t.redact"),
    ("rules: [{id: x, effect: allow, match: {task: {data: [Private Data]}}}]", "rules[0].match.task.data[0]"),
])
def test_bad_content_keys_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "p.yaml").write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as err:
        load_policies(tmp_path)
    assert err.value.key.startswith(key), err.value
