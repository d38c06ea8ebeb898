"""Loading policy files: the compiled form, and errors that name file, key and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guard.errors import ConfigError
from guard.policy import check_policies, load_policies

TOOLS = """\
tools:
  notes:
    kind: http
    upstream: http://127.0.0.1:9101
    actions:
      read:  {method: GET,  path: "/notes/{id}"}
      write: {method: post, path: "/notes"}
  files:
    kind: mcp
    upstream: https://files.example/mcp
    credential: {mode: static, secret_env: FILES_KEY}
    deny_methods: ["resources/*", "prompts/*"]
    timeout_s: 5
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, rules: str, tools: str = TOOLS) -> ConfigError:
    write(tmp_path, "a_tools.yaml", tools)
    write(tmp_path, "b_rules.yaml", rules)
    with pytest.raises(ConfigError) as err:
        load_policies(tmp_path)
    return err.value


def test_loads_tools_and_compiles_actions(tmp_path: Path) -> None:
    write(tmp_path, "tools.yaml", TOOLS)
    p = load_policies(tmp_path)
    notes, files = p.tools["notes"], p.tools["files"]
    assert notes.kind == "http" and notes.upstream == "http://127.0.0.1:9101"
    assert [(a.name, a.method, a.path) for a in notes.actions] == [
        ("read", "GET", "/notes/{id}"),
        ("write", "POST", "/notes"),
    ]
    assert notes.credential.mode == "jwt" and notes.credential.header == "Authorization"
    assert notes.timeout_s == 30.0
    assert files.credential.mode == "static" and files.credential.header == "X-Api-Key"
    assert files.credential.secret_env == "FILES_KEY"
    assert files.deny_methods == ("resources/*", "prompts/*") and files.actions == ()
    assert files.timeout_s == 5
    assert p.source == str(tmp_path) and not p.has_inventory


def test_single_file_and_tests_folder_ignored(tmp_path: Path) -> None:
    single = write(tmp_path, "tools.yaml", TOOLS)
    write(tmp_path, "tests/cases.yaml", "- {name: x}\n")
    assert set(load_policies(single).tools) == {"notes", "files"}
    assert set(load_policies(tmp_path).tools) == {"notes", "files"}


def test_files_merge_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", TOOLS)
    write(tmp_path, "c.yaml", "rules:\n  - {id: second, effect: allow, match: {tool: notes}}\n")
    write(tmp_path, "b.yaml", "rules:\n  - {id: first, effect: allow, match: {tool: notes}}\n")
    write(tmp_path, "empty.yaml", "")
    p = load_policies(tmp_path)
    assert [r.id for r in p.rules] == ["first", "second"]
    assert p.rules[0].file.endswith("b.yaml") and p.rules[0].line == 2


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such"):
        load_policies(tmp_path / "nope")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, "rules:\n  - id: x\n    effect: [allow\n")
    assert err.file.endswith("b_rules.yaml")
    assert "YAML syntax error" in err.reason and err.line == 4


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    err = load_error(tmp_path, "- a\n")
    assert err.file.endswith("b_rules.yaml") and "mapping" in err.reason


def test_duplicate_key_in_one_file(tmp_path: Path) -> None:
    err = load_error(tmp_path, "rules: []\nagents: {}\nrules: []\n")
    assert (err.key, err.reason, err.line) == ("rules", "duplicate key", 3)


RULE_ERRORS = [
    # (rules yaml, key, line, reason fragment)
    ("rules:\n  - {id: r, effect: allow, extra: 1}\n", "rules[0].extra", 2, "unknown key"),
    ("rules:\n  - {id: r, effect: permit}\n", "rules[0].effect", 2, "allow"),
    ("rules:\n  - {effect: allow}\n", "rules[0].id", 2, "required"),
    ("rules:\n  - {id: r, effect: step_up}\n", "rules[0].approvers", 2, "approvers"),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      args:\n        - {path: $.a, equals: 1}\n",
        "rules[0].match.args[0].equals",
        6,
        "unknown key",
    ),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      args:\n        - {path: $.a, eq: 1, ne: 2}\n"
        "",
        "rules[0].match.args[0]",
        6,
        "exactly one operator",
    ),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      args:\n        - path: $.a\n"
        "          matches: '([a-z'\n",
        "rules[0].match.args[0].matches",
        7,
        "regular expression",
    ),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      args:\n        - {eq: 1,\n"
        "           path: '$.a[?('}\n",
        "rules[0].match.args[0].path",
        7,
        "JSONPath",
    ),
    ("rules:\n  - id: r\n    effect: allow\n    match: {tool: nope}\n", "rules[0].match.tool[0]", 4, "nope"),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      tool: notes\n      action: [read, delete]\n",
        "rules[0].match.action[1]",
        6,
        "delete",
    ),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      history: {called: [notes]}\n",
        "rules[0].match.history.called[0]",
        5,
        "tool.action",
    ),
    (
        "rules:\n  - id: r\n    effect: allow\n    match:\n      chain: {caller: ghost}\n",
        "rules[0].match.chain.caller[0]",
        5,
        "ghost",
    ),
    ("rules:\n  - {id: r, effect: allow, rate: {calls: 0, per_s: 1}}\n", "rules[0].rate.calls", 2, "1"),
    (
        "agents:\n  'spiffe://a/b':\n    purpose: x\n",
        'agents["spiffe://a/b"].owner',
        2,
        "required",
    ),
    ("agents:\n  bot: {owner: ' '}\n", "agents.bot.owner", 2, "owner"),
    ("agents:\n  bot: {owner: me, tools: [notes, ghost]}\n", "agents.bot.tools[1]", 2, "ghost"),
]


@pytest.mark.parametrize(("rules", "key", "line", "reason"), RULE_ERRORS)
def test_errors_name_file_key_and_line(tmp_path: Path, rules: str, key: str, line: int, reason: str) -> None:
    err = load_error(tmp_path, rules)
    assert err.file.endswith("b_rules.yaml")
    assert err.key == key
    assert err.line == line
    assert reason in err.reason
    assert f"b_rules.yaml:{line}: {key}:" in str(err)


def test_rule_ids_unique_across_files(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", "rules:\n  - {id: r, effect: deny}\n")
    err = load_error(tmp_path, "rules:\n  - {id: x, effect: deny}\n  - {id: r, effect: deny}\n")
    assert err.file.endswith("c.yaml") and err.key == "rules[0].id" and "b_rules.yaml" in err.reason


def test_tool_names_unique_across_files(tmp_path: Path) -> None:
    err = load_error(tmp_path, "tools:\n  notes: {kind: mcp, upstream: 'http://x'}\n")
    assert (err.key, err.line) == ("tools.notes", 2)
    assert "already declared" in err.reason


TOOL_ERRORS = [
    ("bad: {kind: ftp, upstream: 'http://x'}", "tools.bad.kind"),
    ("bad: {kind: mcp, upstream: 'ftp://x'}", "tools.bad.upstream"),
    ("bad: {kind: mcp, upstream: 'not a url'}", "tools.bad.upstream"),
    ("bad: {kind: http, upstream: 'http://x'}", "tools.bad.actions"),
    ("bad: {kind: mcp, upstream: 'http://x', actions: {a: {method: GET, path: /}}}", "tools.bad.actions"),
    (
        "bad: {kind: http, upstream: 'http://x', actions: {a: {method: FETCH, path: /}}}",
        "tools.bad.actions.a.method",
    ),
    (
        "bad: {kind: http, upstream: 'http://x', actions: {a: {method: GET, path: x}}}",
        "tools.bad.actions.a.path",
    ),
    (
        "bad: {kind: http, upstream: 'http://x', actions: {a: {method: GET, path: '/{a'}}}",
        "tools.bad.actions.a.path",
    ),
    (
        "bad: {kind: http, upstream: 'http://x', actions: {a: {method: GET, path: '/{a}/{a}'}}}",
        "tools.bad.actions.a.path",
    ),
    ("bad: {kind: mcp, upstream: 'http://x', credential: {mode: static}}", "tools.bad.credential.secret_env"),
    ("bad: {kind: mcp, upstream: 'http://x', credential: {mode: oauth}}", "tools.bad.credential.mode"),
    (
        "bad: {kind: http, upstream: 'http://x', deny_methods: [x], actions: {a: {method: GET, path: /}}}",
        "tools.bad.deny_methods",
    ),
    ("bad: {kind: mcp, upstream: 'http://x', timeout_s: 0}", "tools.bad.timeout_s"),
]


@pytest.mark.parametrize(("tool", "key"), TOOL_ERRORS)
def test_tool_errors(tmp_path: Path, tool: str, key: str) -> None:
    write(tmp_path, "t.yaml", "tools:\n  # a comment\n  " + tool + "\n")
    with pytest.raises(ConfigError) as err:
        load_policies(tmp_path)
    assert err.value.key == key
    assert err.value.line == 3


def test_check_policies_warns_about_uncovered_agents(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", TOOLS)
    rules = write(
        tmp_path,
        "b.yaml",
        """\
        agents:
          "spiffe://acme/agent/*": {owner: alice@acme.example, tools: [notes]}
        rules:
          - {id: ok, effect: allow, match: {agent: "spiffe://acme/agent/r", tool: notes}}
          - {id: ok2, effect: allow, match: {agent: "spiffe://acme/*", tool: notes}}
          - id: stray
            effect: allow
            match: {agent: "spiffe://x/*", tool: files}
        """,
    )
    _, warnings = check_policies(tmp_path)
    assert warnings == [
        f"{rules}:6: rule stray names agent 'spiffe://x/*' that no agents entry covers",
        f"{rules}:6: rule stray names tool 'files' that no agent may use",
    ]


def test_check_policies_without_inventory_is_quiet(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", TOOLS + "rules:\n  - {id: r, effect: allow, match: {agent: 'x/*'}}\n")
    policies, warnings = check_policies(tmp_path)
    assert warnings == [] and len(policies.rules) == 1
