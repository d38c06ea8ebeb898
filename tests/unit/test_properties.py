"""Properties that hold for every input: rule combining, canonical digests, audit chains."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from guard.canonical import args_digest, call_digest, canonical_json, compact_json, strict_loads
from guard.hashchain import GENESIS, chain_record, verify_chain
from guard.policy import CallContext, PolicySet, load_policies
from tests.support.policies import TOOLS

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

AGENTS = ["spiffe://acme/agent/a", "spiffe://acme/agent/b", "spiffe://other/agent/c"]

# ---------------------------------------------------------------------------------- rules

match_st = st.fixed_dictionaries(
    {},
    optional={
        "tool": st.sampled_from(["notes", "vault"]),
        "agent": st.sampled_from(["spiffe://acme/*", "spiffe://acme/agent/a", "*", "spiffe://other/*"]),
        "args": st.lists(st.sampled_from([
            {"path": "$.n", "gt": 5}, {"path": "$.n", "lte": 5}, {"path": "$.tag", "eq": "x"},
            {"path": "$.tag", "exists": True}, {"path": "$.tags[*]", "in": ["a", "b"], "quantifier": "any"},
        ]), max_size=2),
        "task": st.sampled_from([{"purpose": "*report*"}, {"labels": {"env": "prod"}}]),
    },
)
effect_st = st.sampled_from(["allow", "deny", "step_up"])
rule_st = st.tuples(effect_st, match_st)
call_st = st.fixed_dictionaries({
    "agent": st.sampled_from(AGENTS),
    "tool_action": st.sampled_from([("notes", "read"), ("notes", "write"), ("vault", "read")]),
    "args": st.fixed_dictionaries({}, optional={"n": st.integers(0, 10), "tag": st.sampled_from(["x", "y"]),
                                                "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)}),
    "purpose": st.sampled_from(["weekly report", "cleanup"]),
    "env": st.sampled_from(["prod", "dev"]),
})


def build(rules: list[tuple[str, dict[str, Any]]]) -> PolicySet:
    docs = []
    for i, (effect, match) in enumerate(rules):
        rule: dict[str, Any] = {"id": f"r{i}-{effect}", "effect": effect, "match": match}
        if effect == "step_up":
            rule["approvers"] = "finance"
        docs.append(rule)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "policy.yaml").write_text(yaml.safe_dump({"tools": TOOLS, "rules": docs}))
        return load_policies(d)


def context(call: dict[str, Any]) -> CallContext:
    tool, action = call["tool_action"]
    return CallContext(agent=call["agent"], tool=tool, action=action, args=call["args"],
                       task_purpose=call["purpose"], task_labels={"env": call["env"]})


def matching(policies: PolicySet, ctx: CallContext) -> set[str]:
    """The effects of the rules that match `ctx`, each rule evaluated alone."""
    effects: set[str] = set()
    for rule in policies.candidates(ctx.tool, ctx.action):  # the rules naming this tool and action
        if rule.matches(ctx):
            effects.add(rule.effect)
    return effects


@SETTINGS
@given(rules=st.lists(rule_st, min_size=1, max_size=6), call=call_st, data=st.data())
def test_deny_beats_step_up_beats_allow_whatever_the_order(
    rules: list[tuple[str, dict[str, Any]]], call: dict[str, Any], data: st.DataObject
) -> None:
    ctx = context(call)
    decision = build(rules).evaluate(ctx)
    shuffled = data.draw(st.permutations(list(enumerate(rules))))
    again = build([r for _, r in shuffled]).evaluate(ctx)
    assert decision.effect == again.effect  # the order of rules never changes the outcome
    effects = matching(build(rules), ctx)
    expected = "deny" if "deny" in effects or not effects else "step_up" if "step_up" in effects else "allow"
    assert decision.effect == expected


@SETTINGS
@given(rules=st.lists(rule_st, min_size=1, max_size=5), extra=st.lists(match_st, min_size=1, max_size=3),
       call=call_st)
def test_adding_allow_rules_never_lets_a_denied_call_through(
    rules: list[tuple[str, dict[str, Any]]], extra: list[dict[str, Any]], call: dict[str, Any]
) -> None:
    ctx = context(call)
    before = build(rules)
    assume("deny" in matching(before, ctx))
    after = build(rules + [("allow", m) for m in extra])
    assert after.evaluate(ctx).effect == "deny"
    assert build([("allow", m) for m in extra] + rules).evaluate(ctx).effect == "deny"


# ---------------------------------------------------------------------------------- digests

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20),
                      st.floats(allow_nan=False, allow_infinity=False))
json_st = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)


def reorder(value: Any, rnd: st.DataObject) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        keys = rnd.draw(st.permutations(list(value)))
        return {k: reorder(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [reorder(v, rnd) for v in value]
    return value


@SETTINGS
@given(value=json_st, data=st.data())
def test_canonical_json_and_args_digest_ignore_key_order(value: Any, data: st.DataObject) -> None:
    other = reorder(value, data)
    assert canonical_json(value) == canonical_json(other)
    assert json.loads(canonical_json(value)) == value
    assert args_digest("t", "a", value) == args_digest("t", "a", other)
    assert b" " not in canonical_json(value).replace(b'" "', b"").split(b'"')[0]


# every JSON value, floats and ints of every size included (orjson writes most of them, the
# standard library's encoder the rest: the bytes must be the same either way)
any_json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
SMALL_FLOATS = [1e-7, -2.5e-5, 1e-05, 4.7009413259741616e-05, 9.999999e-06, 5e-324, 1e-10, 1e16, 1e22,
                123456789012345.0, 0.0001, 0.00012, -0.0]


def _standard(value: Any, sort_keys: bool) -> bytes:
    return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=any_json_st)
def test_the_json_encoders_write_what_the_standard_library_writes(value: Any) -> None:
    """Digests and audit hashes keep their bytes whichever encoder writes them; compact JSON is
    the same value (a small float may be written in another form)."""
    assert canonical_json(value) == _standard(value, sort_keys=True)
    assert json.loads(compact_json(value)) == value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=any_json_st, spaced=st.booleans())
def test_strict_loads_reads_what_the_standard_library_reads(value: Any, spaced: bool) -> None:
    """Compact input (read by orjson when it writes it back byte for byte) and any other input
    give json.loads's value."""
    text = json.dumps(value, separators=(", ", ": ") if spaced else (",", ":"), ensure_ascii=spaced)
    assert strict_loads(text.encode()) == json.loads(text)
    assert strict_loads(compact_json(value)) == value


@pytest.mark.parametrize("body", [b'{"a":1,"a":2}', b'{"a":{"b":1,"b":1}}', b'[{"x":"y","x":"y"}]',
                                  b'{"a": 1, "a": 2}', b'{"a":NaN}', b'{"a":Infinity}', b'[-Infinity]'])
def test_strict_loads_refuses_duplicate_keys_and_constants_in_every_form(body: bytes) -> None:
    with pytest.raises(ValueError):
        strict_loads(body)


def test_what_orjson_writes_differently_is_canonical_as_the_standard_library_writes_it() -> None:
    class Name(str):
        pass

    deep: Any = []
    for _ in range(300):
        deep = [deep]
    for value in [*SMALL_FLOATS, {"f": SMALL_FLOATS}, "1e-5 is text", 2**64, -(2**70), {"n": [2**100]},
                  {2: "a", 1: "b"}, Name("x"), {"k": Name("v")}, deep, (1, "é")]:
        assert canonical_json(value) == _standard(value, sort_keys=True), value
        assert json.loads(compact_json(value)) == json.loads(_standard(value, sort_keys=False)), value


@SETTINGS
@given(a=json_st, b=json_st)
def test_args_digest_differs_when_the_arguments_differ(a: Any, b: Any) -> None:
    assume(canonical_json(a) != canonical_json(b))
    assert args_digest("t", "a", a) != args_digest("t", "a", b)


@SETTINGS
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), path=st.from_regex(r"/[a-z0-9/]{0,20}(\?[a-z=&]*)?",
       fullmatch=True), body=st.binary(max_size=200), other=st.binary(max_size=200))
def test_call_digest_binds_method_path_and_body(method: str, path: str, body: bytes, other: bytes) -> None:
    assert call_digest(method, path, body) == call_digest(method.lower(), path, body)
    assert len(call_digest(method, path, body)) == 43 and "=" not in call_digest(method, path, body)
    if other != body:
        assert call_digest(method, path, body) != call_digest(method, path, other)
    assert call_digest(method, path, body) != call_digest(method, path + "x", body)
    assert call_digest("PATCH", path, body) != call_digest(method, path, body)


@SETTINGS
@given(value=st.dictionaries(st.text(max_size=8), json_st, min_size=1, max_size=5), data=st.data())
def test_call_digest_of_a_json_body_is_stable_only_for_the_same_bytes(value: dict[str, Any],
                                                                     data: st.DataObject) -> None:
    """The credential binds the body bytes the tool gets: re-encoding the same JSON differently
    is another call (canonical form is what approvals bind, not credentials)."""
    body = canonical_json(value)
    assert call_digest("POST", "/x", body) == call_digest("POST", "/x", canonical_json(reorder(value, data)))
    spaced = json.dumps(value, separators=(", ", ": "), sort_keys=True).encode()
    if spaced != body:
        assert call_digest("POST", "/x", body) != call_digest("POST", "/x", spaced)


# ---------------------------------------------------------------------------------- audit chains

event_st = st.fixed_dictionaries({
    "ts": st.floats(0, 2e9, allow_nan=False),
    "task_id": st.just("task_1"),
    "event": st.sampled_from(["task_created", "call_decided", "call_forwarded", "approval_requested"]),
    "agent": st.sampled_from(AGENTS),
}, optional={
    "tool": st.sampled_from(["notes", "vault"]),
    "effect": st.sampled_from(["allow", "deny", "step_up"]),
    "status": st.integers(100, 599),
    "detail": st.text(max_size=30),
    "chain": st.lists(st.sampled_from(["notes", "vault"]), max_size=3),
})


def chain_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records, prev = [], GENESIS
    for seq, fields in enumerate(events, start=1):
        rec = chain_record(fields, seq, prev).fields
        records.append(dict(rec))
        prev = rec["hash"]
    return records


@SETTINGS
@given(events=st.lists(event_st, max_size=12))
def test_any_sequence_of_events_verifies(events: list[dict[str, Any]]) -> None:
    records = chain_of(events)
    v = verify_chain(records)
    assert v.verified and v.count == len(events)
    # what is written to disk and read back still verifies
    assert verify_chain([json.loads(json.dumps(r, ensure_ascii=False)) for r in records]).verified


@SETTINGS
@given(events=st.lists(event_st, min_size=1, max_size=10), data=st.data())
def test_any_single_change_breaks_the_chain(events: list[dict[str, Any]], data: st.DataObject) -> None:
    records = chain_of(events)
    i = data.draw(st.integers(0, len(records) - 1))
    kind = data.draw(st.sampled_from(["edit", "delete", "swap", "insert", "drop_field", "add_field"]))
    tampered = [dict(r) for r in records]
    if kind == "edit":
        field = data.draw(st.sampled_from(sorted(k for k in tampered[i] if k != "hash")))
        new = data.draw(json_st)
        assume(new != tampered[i][field])
        tampered[i][field] = new
    elif kind == "delete":
        assume(i < len(records) - 1)  # dropping the tail is a truncation: see the note below
        del tampered[i]
    elif kind == "swap":
        j = data.draw(st.integers(0, len(records) - 1))
        assume(j != i and records[i] != records[j])
        tampered[i], tampered[j] = tampered[j], tampered[i]
    elif kind == "insert":
        forged = chain_record(data.draw(event_st), i + 1, tampered[i]["prev_hash"]).fields
        tampered.insert(i, dict(forged))
    elif kind == "drop_field":
        optional = sorted(k for k in tampered[i] if k not in ("hash", "seq", "prev_hash"))
        del tampered[i][data.draw(st.sampled_from(optional))]
    else:
        tampered[i]["injected"] = data.draw(json_st)
    assert not verify_chain(tampered).verified, kind
    # a truncated tail still verifies on its own: the count is what shows it (the API reports it)
    assert verify_chain(records[:i]).count == i
