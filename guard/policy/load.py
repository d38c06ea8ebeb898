"""Read policy files, check them, and compile them once into a PolicySet.

Every problem is a ConfigError naming the file, the dotted key (`rules[2].match.args[0].path`)
and, when the key is in the file, its line.

One job (from YAML to a compiled PolicySet, with the checks that span files), which is why it
runs past 400 lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from pydantic import ValidationError

from guard.errors import ConfigError
from guard.policy.conditions import Condition, ConditionError, compile_condition
from guard.policy.evaluate import ChainMatch, ContentMatch, Globs, HistoryMatch, PolicySet, Rule, TaskMatch
from guard.policy.model import (
    ActionModel,
    ActionSpec,
    AgentEntry,
    AgentMatchModel,
    CredentialException,
    CredentialModel,
    CredentialSpec,
    LeaseSpec,
    MatchModel,
    OAuthSpec,
    PinDigestsModel,
    PolicyFileModel,
    RateSpec,
    RuleModel,
    SecretRef,
    SecretSourceModel,
    ToolMatchModel,
    ToolModel,
    ToolSpec,
)
from guard.spiffe import valid_spiffe_id
from guard.yamlfile import LineMap, Loc, format_key, read_yaml, validation_error

__all__ = [
    "VAULT_REF",
    "LineMap",
    "Loc",
    "check_policies",
    "format_key",
    "load_policies",
    "read_yaml",
    "validation_error",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TEMPLATE = re.compile(r"^/(?:[^{}]|\{[A-Za-z_][A-Za-z0-9_]*\})*$")
_STATIC_HEADER = "X-Api-Key"


# --------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class _Source:
    file: str
    doc: PolicyFileModel
    lines: LineMap

    def fail(self, loc: Loc, reason: str) -> NoReturn:
        raise ConfigError(self.file, format_key(loc), reason, self.lines.line(loc))


def _read_source(path: Path) -> _Source:
    data, lines = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "a policy file must be a mapping of tools, agents and rules", 1)
    try:
        doc = PolicyFileModel.model_validate(data)
    except ValidationError as exc:
        raise validation_error(str(path), lines, exc) from None
    return _Source(str(path), doc, lines)


def _policy_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.yaml") if p.is_file())
    raise ConfigError(str(path), "", "no such policy file or folder")


# --------------------------------------------------------------------------- tools


_MODE_KEYS: dict[str, frozenset[str]] = {
    "jwt": frozenset({"header", "ttl_s"}),
    "none": frozenset(),
    "static": frozenset({"header", "secret_env", "secret", "format", "exception"}),
    "oauth2": frozenset({"header", "format", "token_url", "revocation_url", "client_id", "client_auth",
                         "client_secret", "resource", "scopes", "per_task"}),
    "vault_lease": frozenset({"path", "headers"}),
}
_MODE_KEYS["token_exchange"] = _MODE_KEYS["oauth2"] | {"audience"}
VAULT_REF = re.compile(r"^(?P<mount>[^#\s]+?)/data/(?P<path>[^#\s]+)#(?P<field>[^#\s]+)$")
_LEASE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.@-]+)+$")


def _secret(src: _Source, loc: Loc, model: SecretSourceModel) -> SecretRef:
    given = [(k, v) for k, v in (("env", model.env), ("file", model.file), ("vault", model.vault)) if v]
    if len(given) != 1:
        src.fail(loc, "a secret source is exactly one of env, file, vault")
    kind, ref = given[0]
    if kind == "vault" and not VAULT_REF.match(ref):
        src.fail((*loc, "vault"), f"{ref!r} is not MOUNT/data/PATH#FIELD (a KV v2 secret and its field)")
    return SecretRef(kind, ref)  # type: ignore[arg-type]


def _format(src: _Source, loc: Loc, fmt: str | None) -> str:
    if fmt is None:
        return "{secret}"
    if "{secret}" not in fmt or fmt.replace("{secret}", "").count("{") or fmt.replace("{secret}", "").count("}"):
        src.fail((*loc, "format"), "format must contain {secret} and no other {…}")
    return fmt


def _oauth(src: _Source, loc: Loc, cred: CredentialModel) -> OAuthSpec:
    for key in ("token_url", "client_id"):
        if not getattr(cred, key):
            src.fail((*loc, key), f"{cred.mode} needs {key}")
    for key in ("token_url", "revocation_url"):
        url = urlparse(getattr(cred, key) or "http://x")
        if url.scheme not in ("http", "https") or not url.netloc:
            src.fail((*loc, key), f"{key} must be an http(s) URL")
    client_auth = cred.client_auth or "private_key_jwt"
    secret = None
    if client_auth == "private_key_jwt":
        if cred.client_secret is not None:
            src.fail((*loc, "client_secret"), "private_key_jwt signs with the guard's key: remove client_secret")
    elif cred.client_secret is None:
        src.fail((*loc, "client_secret"), f"{client_auth} needs client_secret")
    else:
        secret = _secret(src, (*loc, "client_secret"), cred.client_secret)
    per_task = True if cred.per_task is None else cred.per_task
    if cred.mode == "token_exchange" and not per_task:
        src.fail((*loc, "per_task"), "an exchanged token names one agent and task: it cannot be shared (per_task)")
    if per_task and not cred.revocation_url:
        src.fail((*loc, "revocation_url"), "per_task tokens are revoked when the task ends: revocation_url is "
                 "needed (or per_task: false)")
    if cred.mode == "token_exchange" and not cred.audience and not cred.resource:
        src.fail((*loc, "audience"), "token_exchange needs audience (or resource)")
    assert cred.token_url is not None and cred.client_id is not None
    return OAuthSpec(
        token_url=cred.token_url, client_id=cred.client_id, client_auth=client_auth,
        revocation_url=cred.revocation_url, client_secret=secret, resource=cred.resource,
        audience=cred.audience, scopes={k: tuple(v) for k, v in (cred.scopes or {}).items()}, per_task=per_task,
    )


def _lease(src: _Source, loc: Loc, cred: CredentialModel) -> LeaseSpec:
    if not cred.path or not _LEASE_PATH.match(cred.path):
        src.fail((*loc, "path"), "vault_lease needs path: a dynamic secrets path such as database/creds/ROLE")
    if not cred.headers:
        src.fail((*loc, "headers"), "vault_lease needs headers, e.g. {X-Db-User: \"{username}\"}")
    assert cred.path is not None and cred.headers is not None
    for name, template in cred.headers.items():
        try:
            template.format_map(_AnyField())
        except (ValueError, IndexError, AttributeError) as e:
            src.fail((*loc, "headers", name), f"bad template {template!r}: {e}")
    return LeaseSpec(cred.path, dict(cred.headers))


class _AnyField(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _credential(src: _Source, loc: Loc, tool: ToolModel) -> CredentialSpec:
    cred = tool.credential
    loc = (*loc, "credential")
    allowed = _MODE_KEYS[cred.mode] | {"mode"}
    for key in sorted(cred.model_fields_set - allowed):
        src.fail((*loc, key), f"{key} does not apply to mode {cred.mode}")
    secret = None
    if cred.mode == "static":
        if cred.secret_env and cred.secret is not None:
            src.fail((*loc, "secret"), "give secret or secret_env, not both")
        if cred.secret is not None:
            secret = _secret(src, (*loc, "secret"), cred.secret)
        elif cred.secret_env:
            secret = SecretRef("env", cred.secret_env)
        else:
            src.fail((*loc, "secret_env"), "a static credential needs secret (env, file or vault) or secret_env")
    default_fmt = "Bearer {secret}" if cred.mode in ("oauth2", "token_exchange") else None
    default = _STATIC_HEADER if cred.mode == "static" else "Authorization"
    return CredentialSpec(
        cred.mode, cred.header or default, cred.secret_env, cred.ttl_s, secret,
        _format(src, loc, cred.format or default_fmt),
        _oauth(src, loc, cred) if cred.mode in ("oauth2", "token_exchange") else None,
        _lease(src, loc, cred) if cred.mode == "vault_lease" else None,
        CredentialException(cred.exception.owner, cred.exception.reason, cred.exception.expires.timestamp())
        if cred.exception is not None else None,
    )


def _action(src: _Source, loc: Loc, name: str, model: ActionModel) -> ActionSpec:
    if not _NAME.match(name):
        src.fail(loc, "action names use letters, digits, '_' and '-'")
    method = model.method.upper()
    if method not in _METHODS:
        src.fail((*loc, "method"), f"unknown HTTP method {model.method!r}")
    if not _TEMPLATE.match(model.path):
        src.fail((*loc, "path"), f"bad path template {model.path!r}: must start with '/', vars as {{name}}")
    variables = re.findall(r"\{([^}]*)\}", model.path)
    if len(variables) != len(set(variables)):
        src.fail((*loc, "path"), f"path template {model.path!r} repeats a variable")
    return ActionSpec(name, method, model.path)


def _tool(src: _Source, name: str, tool: ToolModel) -> ToolSpec:
    loc: Loc = ("tools", name)
    if not _NAME.match(name):
        src.fail(loc, "tool names use letters, digits, '_' and '-'")
    url = urlparse(tool.upstream)
    if url.scheme not in ("http", "https") or not url.netloc:
        src.fail((*loc, "upstream"), f"upstream must be an http(s) URL, got {tool.upstream!r}")
    if tool.kind == "http" and not tool.actions:
        src.fail((*loc, "actions"), "an http tool needs at least one action")
    if tool.kind == "mcp" and tool.actions is not None:
        src.fail((*loc, "actions"), "an mcp tool takes its actions from tools/call; remove actions")
    if tool.kind == "http" and tool.deny_methods is not None:
        src.fail((*loc, "deny_methods"), "deny_methods applies to mcp tools only")
    actions = tuple(_action(src, (*loc, "actions", a), a, model) for a, model in (tool.actions or {}).items())
    return ToolSpec(
        name=name,
        kind=tool.kind,
        upstream=tool.upstream,
        credential=_credential(src, loc, tool),
        actions=actions,
        deny_methods=tuple(tool.deny_methods or ()),
        timeout_s=tool.timeout_s,
        tls=(tool.tls.ca_file, tool.tls.cert_file, tool.tls.key_file) if tool.tls is not None else None,
        spiffe_id=_tool_spiffe_id(src, loc, tool),
        **_tool_data(src, loc, tool),
    )


def _tool_spiffe_id(src: _Source, loc: Loc, tool: ToolModel) -> str | None:

    if tool.tls is not None and bool(tool.tls.cert_file) != bool(tool.tls.key_file):
        src.fail((*loc, "tls"), "cert_file and key_file go together")
    if tool.spiffe_id is None:
        return None
    if not valid_spiffe_id(tool.spiffe_id):
        src.fail((*loc, "spiffe_id"), f"not a SPIFFE ID: {tool.spiffe_id!r}")
    if not tool.upstream.startswith("https://"):
        src.fail((*loc, "spiffe_id"), "a tool checked by SPIFFE ID needs an https:// upstream")
    return tool.spiffe_id


def _tools(sources: list[_Source]) -> dict[str, ToolSpec]:
    tools: dict[str, ToolSpec] = {}
    where: dict[str, str] = {}
    for src in sources:
        for name, model in src.doc.tools.items():
            if name in tools:
                src.fail(("tools", name), f"tool {name!r} is already declared in {where[name]}")
            tools[name] = _tool(src, name, model)
            where[name] = src.file
    return tools


# --------------------------------------------------------------------------- agents


def _agent_globs(agent: AgentMatchModel | list[str] | None) -> Globs | None:
    """match.agent: a list of globs, or {sub: [globs], unusual: bool}."""
    names = agent.sub if isinstance(agent, AgentMatchModel) else agent
    return Globs.of(tuple(names)) if names is not None else None


def _agents(sources: list[_Source], tools: dict[str, ToolSpec]) -> tuple[AgentEntry, ...]:
    entries: list[AgentEntry] = []
    seen: dict[str, str] = {}
    for src in sources:
        for pattern, model in src.doc.agents.items():
            loc: Loc = ("agents", pattern)
            if pattern in seen:
                src.fail(loc, f"agent {pattern!r} is already listed in {seen[pattern]}")
            if not model.owner.strip():
                src.fail((*loc, "owner"), "every agent needs a named human owner")
            for i, tool in enumerate(model.tools or ()):
                if tool not in tools:
                    src.fail((*loc, "tools", i), f"unknown tool {tool!r}")
            seen[pattern] = src.file
            caps = tuple(model.tools) if model.tools is not None else None
            entries.append(AgentEntry(pattern, model.owner, model.purpose, caps, model.binding))
    return tuple(entries)


# --------------------------------------------------------------------------- rules


def _check_tool_names(src: _Source, loc: Loc, names: list[str], tools: dict[str, ToolSpec]) -> None:
    for i, name in enumerate(names):
        if name not in tools:
            src.fail((*loc, i), f"unknown tool {name!r}")


def _check_actions(src: _Source, loc: Loc, match: MatchModel, tools: dict[str, ToolSpec]) -> None:
    names = _rule_tools(match, tools)
    named = [tools[t] for t in names] if names is not None else list(tools.values())
    if any(t.kind == "mcp" for t in named):
        return  # MCP action names are only known upstream
    known = {a for t in named for a in t.action_names()}
    for i, action in enumerate(match.action or ()):
        if action != "*" and action not in known:
            src.fail((*loc, i), f"unknown action {action!r} for tool(s) {', '.join(t.name for t in named)}")


def _check_history(src: _Source, loc: Loc, names: list[str], tools: dict[str, ToolSpec]) -> None:
    for i, entry in enumerate(names):
        tool_name, dot, action = entry.partition(".")
        tool = tools.get(tool_name)
        if not dot or not action:
            src.fail((*loc, i), f"history entries are 'tool.action', got {entry!r}")
        if tool is None:
            src.fail((*loc, i), f"unknown tool {tool_name!r}")
        if tool.kind == "http" and action not in tool.action_names():
            src.fail((*loc, i), f"unknown action {action!r} for tool {tool_name}")


def _conditions(src: _Source, loc: Loc, match: MatchModel) -> tuple[Condition, ...]:
    out: list[Condition] = []
    for i, cond in enumerate(match.args):
        try:
            out.append(compile_condition(cond.path, cond.operators(), cond.quantifier))
        except ConditionError as exc:
            key: Loc = (*loc, "args", i, exc.key) if exc.key else (*loc, "args", i)
            src.fail(key, exc.reason)
    return tuple(out)


def _chain(src: _Source, loc: Loc, match: MatchModel, tools: dict[str, ToolSpec]) -> ChainMatch | None:
    chain = match.chain
    if chain is None:
        return None
    if chain.caller is not None:
        _check_tool_names(src, (*loc, "chain", "caller"), chain.caller, tools)
    return ChainMatch(
        callers=frozenset(chain.caller) if chain.caller is not None else None,
        depth_lte=chain.depth_lte,
        depth_lt=chain.depth_lt,
        depth_gte=chain.depth_gte,
        depth_gt=chain.depth_gt,
        depth_eq=chain.depth_eq,
        loop=chain.loop,
    )


def _history(src: _Source, loc: Loc, match: MatchModel, tools: dict[str, ToolSpec]) -> HistoryMatch | None:
    history = match.history
    if history is None:
        return None
    for key in ("called", "not_called"):
        _check_history(src, (*loc, "history", key), getattr(history, key) or [], tools)
    return HistoryMatch(
        called=frozenset(history.called) if history.called is not None else None,
        not_called=frozenset(history.not_called) if history.not_called is not None else None,
    )


def _names(values: list[str] | None) -> frozenset[str] | None:
    if values is None or "*" in values:
        return None
    return frozenset(values)


def _rule(src: _Source, i: int, model: RuleModel, tools: dict[str, ToolSpec], order: int) -> Rule:
    loc: Loc = ("rules", i)
    m, mloc = model.match, (*loc, "match")
    if model.effect == "step_up" and not model.approvers:
        src.fail((*loc, "approvers"), "a step_up rule needs approvers")
    if isinstance(m.tool, list):
        _check_tool_names(src, (*mloc, "tool"), m.tool, tools)
    _check_actions(src, (*mloc, "action"), m, tools)
    task = m.task
    content = _content(src, mloc, m)
    return Rule(
        id=model.id,
        effect=model.effect,
        file=src.file,
        line=src.lines.line(loc),
        order=order,
        agents=_agent_globs(m.agent),
        unusual=m.agent.unusual if isinstance(m.agent, AgentMatchModel) else None,
        tools=_rule_tools(m, tools),
        actions=_names(m.action),
        args=_conditions(src, mloc, m),
        task=TaskMatch(task.purpose, tuple(task.labels.items())) if task is not None else None,
        chain=_chain(src, mloc, m, tools),
        history=_history(src, mloc, m, tools),
        approvers=tuple(dict.fromkeys(model.approvers)),
        approvals_required=model.approvals_required,
        credential_ttl_s=model.credential.ttl_s if model.credential is not None else None,
        rate=RateSpec(model.rate.calls, model.rate.per_s) if model.rate is not None else None,
        audit_args=model.audit_args,
        content=content,
    )


# --- content and tool integrity (guard.content) ---------------------------------------------------

_KINDS = frozenset({"secret", "pii"})
_DATA_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def _rule_tools(m: MatchModel, tools: dict[str, ToolSpec]) -> frozenset[str] | None:
    if isinstance(m.tool, ToolMatchModel):  # {egress: external}: the tools so labelled
        return frozenset(name for name, spec in tools.items() if spec.egress)
    return _names(m.tool)


def _content(src: _Source, loc: Loc, m: MatchModel) -> ContentMatch | None:
    data = m.task.data if m.task is not None else None
    for i, label in enumerate(data or ()):
        if not _DATA_LABEL.match(label):
            src.fail((*loc, "task", "data", i), f"data labels are lowercase words, got {label!r}")
    c = m.content
    if c is None and data is None:
        return None
    for key in ("args", "result"):
        for i, kind in enumerate(getattr(c, key) or () if c is not None else ()):
            if kind not in _KINDS:
                src.fail((*loc, "content", key, i), f"finding kinds are secret and pii, got {kind!r}")
    return ContentMatch(
        args=frozenset(c.args) if c is not None and c.args is not None else None,
        result=frozenset(c.result) if c is not None and c.result is not None else None,
        uninspected=c.uninspected if c is not None else None,
        allow_flow=c.allow_flow if c is not None else None,
        data=frozenset(data) if data is not None else None,
    )


def _tool_data(src: _Source, loc: Loc, tool: ToolModel) -> dict[str, Any]:
    """The ToolSpec fields of `data`, `redact` and `pin`."""
    out: dict[str, Any] = {}
    if tool.data is not None:
        for i, label in enumerate(tool.data.returns):
            if not _DATA_LABEL.match(label):
                src.fail((*loc, "data", "returns", i), f"data labels are lowercase words, got {label!r}")
        out["returns"] = frozenset(tool.data.returns)
        out["egress"] = tool.data.egress == "external"
    if tool.redact:
        out["redact"] = frozenset(tool.redact)
    pin = tool.pin
    if pin is not None and tool.kind != "mcp":
        src.fail((*loc, "pin"), "pin applies to mcp tools only")
    if isinstance(pin, PinDigestsModel):
        for name, digest in pin.sha256.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                src.fail((*loc, "pin", "sha256", name), "a pin is 64 lowercase hex digits (sha256)")
        out["pin"], out["pins"] = "sha256", dict(pin.sha256)
    elif tool.kind == "mcp":
        out["pin"] = pin or "tofu"
    return out


# --- end content and tool integrity


def _rules(sources: list[_Source], tools: dict[str, ToolSpec]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for src in sources:
        for i, model in enumerate(src.doc.rules):
            if model.id in seen:
                src.fail(("rules", i, "id"), f"rule id {model.id!r} is already used in {seen[model.id]}")
            seen[model.id] = src.file
            rules.append(_rule(src, i, model, tools, len(rules)))
    return tuple(rules)


# --------------------------------------------------------------------------- entry points


def load_policies(path: str | Path) -> PolicySet:
    """Load a folder of `*.yaml` policy files (not `tests/`), or one file."""
    sources = [_read_source(p) for p in _policy_files(Path(path))]
    tools = _tools(sources)
    agents = _agents(sources, tools)
    rules = _rules(sources, tools)
    return PolicySet(tools, agents, rules, source=str(path))


def _overlaps(pattern: str, entries: tuple[AgentEntry, ...]) -> bool:
    """Whether some agent entry could name an agent that `pattern` names."""
    return any(e.matches(pattern) or fnmatchcase(e.pattern, pattern) for e in entries)


def _uncovered_agents(policies: PolicySet, rule: Rule) -> list[str]:
    if not policies.has_inventory or rule.agents is None:
        return []
    patterns = [*sorted(rule.agents.exact), *rule.agents.globs]
    return [
        f"rule {rule.id} names agent {p!r} that no agents entry covers"
        for p in patterns
        if not _overlaps(p, policies.agents)
    ]


def _unusable_tools(policies: PolicySet, rule: Rule) -> list[str]:
    """Tools a non-deny rule names that every agent's `tools` cap leaves out."""
    caps = [e.tools for e in policies.agents]
    if rule.effect == "deny" or rule.tools is None or not caps or None in caps:
        return []
    usable = {t for cap in caps for t in cap or ()}
    return [f"rule {rule.id} names tool {t!r} that no agent may use" for t in sorted(rule.tools - usable)]


def _warnings(policies: PolicySet) -> list[str]:
    out: list[str] = []
    for rule in policies.rules:
        where = f"{rule.file}:{rule.line}" if rule.line is not None else rule.file
        for problem in _uncovered_agents(policies, rule) + _unusable_tools(policies, rule):
            out.append(f"{where}: {problem}")
    return out


def check_policies(path: str | Path) -> tuple[PolicySet, list[str]]:
    """Load the policies and list what is legal but probably a mistake."""
    policies = load_policies(path)
    return policies, _warnings(policies)
