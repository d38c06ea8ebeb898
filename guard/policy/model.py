"""Policy files: the YAML schema (pydantic, strict about keys) and the public frozen values.

The pydantic models describe one file exactly as written; `load.py` checks what spans files
(unknown tools, duplicate ids) and compiles them into the frozen dataclasses below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from guard.domain import Effect, frozen

__all__ = [
    "ActionSpec",
    "AgentEntry",
    "CallContext",
    "CredentialMode",
    "CredentialSpec",
    "Decision",
    "LeaseSpec",
    "OAuthSpec",
    "RateSpec",
    "SecretRef",
    "ToolSpec",
]

Reason = Literal["rule", "no_rule", "tool_not_in_task", "chain_loop", "chain_too_deep", "exfiltration"]


# --------------------------------------------------------------------------- YAML schema


def _as_list(value: Any) -> Any:
    """`x` and `[x]` mean the same thing wherever a key takes one name or a list of names."""
    return [value] if isinstance(value, str) else value


Names = Annotated[list[str], BeforeValidator(_as_list)]
OptNames = Annotated[list[str] | None, BeforeValidator(_as_list)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CredentialMode = Literal["jwt", "static", "none", "oauth2", "token_exchange", "vault_lease"]


class SecretSourceModel(_Schema):
    """Where a secret comes from: exactly one of env, file, vault."""

    env: str | None = None
    file: str | None = None
    vault: str | None = None


# -- credentials hygiene (guard.credentials.hygiene): a static secret's documented exception -----------
class CredentialExceptionModel(_Schema):
    owner: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=1000)
    expires: AwareDatetime  # RFC 3339 with a zone: "2027-03-01T00:00:00Z"
# -- end of credentials hygiene ------------------------------------------------------------------------


class CredentialModel(_Schema):
    mode: CredentialMode = "jwt"
    header: str | None = None
    secret_env: str | None = None
    ttl_s: int | None = Field(default=None, ge=1)
    secret: SecretSourceModel | None = None  # static
    format: str | None = None  # static, oauth2, token_exchange: how the value goes into `header`
    token_url: str | None = None  # oauth2, token_exchange
    revocation_url: str | None = None
    client_id: str | None = None
    client_auth: Literal["private_key_jwt", "client_secret_basic", "client_secret_post"] | None = None
    client_secret: SecretSourceModel | None = None
    resource: str | None = None
    scopes: dict[str, list[str]] | None = None
    per_task: bool | None = None
    audience: str | None = None  # token_exchange
    path: str | None = None  # vault_lease
    headers: dict[str, str] | None = None  # vault_lease
    exception: CredentialExceptionModel | None = None  # static: why it is allowed, until when (hygiene)


class ActionModel(_Schema):
    method: str
    path: str


class ToolTLSModel(_Schema):
    ca_file: str | None = None  # the tool's CA (default: the system's)
    cert_file: str | None = None  # what the guard presents: its SVID, re-read on change
    key_file: str | None = None


# --- content and tool integrity (guard.content): tool data labels, redaction, pins, content matches


class DataModel(_Schema):
    """`data` on a tool: the labels its results carry, and whether its arguments leave the organisation."""

    returns: Names = []  # e.g. private, untrusted
    egress: Literal["external"] | None = None


class PinDigestsModel(_Schema):
    sha256: dict[str, str]  # MCP tool name -> the lowercase hex digest of its definition


class ToolMatchModel(_Schema):
    """`match.tool: {egress: external}`: every tool whose arguments leave the organisation."""

    egress: Literal["external"]


class ContentMatchModel(_Schema):
    """`match.content`: detector findings (kinds) in the call's arguments or in its result."""

    args: OptNames = None
    result: OptNames = None
    uninspected: bool | None = None
    allow_flow: bool | None = None  # an allow rule that lets a remembered value leave (exfiltration)


def _tool_selector(value: Any) -> Any:
    return value if isinstance(value, dict) else _as_list(value)


ToolSelector = Annotated[list[str] | ToolMatchModel | None, BeforeValidator(_tool_selector)]
RedactKind = Literal["secret", "pii"]

# --- end content and tool integrity


class ToolModel(_Schema):
    kind: Literal["http", "mcp"]
    upstream: str
    credential: CredentialModel = CredentialModel()
    actions: dict[str, ActionModel] | None = None
    deny_methods: OptNames = None
    timeout_s: float = Field(default=30.0, gt=0)
    tls: ToolTLSModel | None = None
    spiffe_id: str | None = None  # the tool's certificate must carry this URI SAN (instead of a host name)
    data: DataModel | None = None  # content and tool integrity: result labels, egress
    redact: list[RedactKind] | None = None  # finding kinds replaced by [REDACTED:<kind>] in results
    pin: Literal["tofu", "off"] | PinDigestsModel | None = None  # mcp: tofu by default


class AgentModel(_Schema):
    owner: str
    purpose: str = ""
    tools: OptNames = None
    binding: Literal["optional", "required"] = "optional"  # required: bearer task tokens refused


class ConditionModel(_Schema):
    """One args condition: a JSONPath, exactly one operator, and a quantifier."""

    path: str
    quantifier: Literal["all", "any"] = "all"
    eq: Any = None
    ne: Any = None
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None
    in_: Any = Field(default=None, alias="in")
    not_in: Any = None
    matches: Any = None
    contains: Any = None
    exists: Any = None
    len_gt: Any = None
    len_lt: Any = None

    def operators(self) -> list[tuple[str, Any]]:
        """The operators written in the file (an explicit `null` counts), by their YAML names."""
        names = self.model_fields_set - {"path", "quantifier"}
        return [(self.__class__.model_fields[n].alias or n, getattr(self, n)) for n in sorted(names)]


class TaskMatchModel(_Schema):
    purpose: str | None = None
    labels: dict[str, str] = {}
    data: OptNames = None  # every listed data label is on the task (content and tool integrity)


class ChainMatchModel(_Schema):
    caller: OptNames = None
    depth_lte: int | None = None
    depth_lt: int | None = None
    depth_gte: int | None = None
    depth_gt: int | None = None
    depth_eq: int | None = None
    loop: bool | None = None


class HistoryMatchModel(_Schema):
    called: OptNames = None
    not_called: OptNames = None


# -- baselines (guard.signals.baseline): match.agent as {unusual: true, sub: [globs]} ---------------------
class AgentMatchModel(_Schema):
    unusual: bool | None = None  # the call is unusual for its agent (a baseline: guard.yaml `baseline`)
    sub: OptNames = None  # glob(s) on the agent's sub, as `agent: [...]`
# -- end of baselines ------------------------------------------------------------------------------------


class MatchModel(_Schema):
    agent: AgentMatchModel | OptNames = None
    tool: ToolSelector = None
    action: OptNames = None
    args: list[ConditionModel] = []
    task: TaskMatchModel | None = None
    chain: ChainMatchModel | None = None
    history: HistoryMatchModel | None = None
    content: ContentMatchModel | None = None


class RuleCredentialModel(_Schema):
    ttl_s: int = Field(ge=1)


class RateModel(_Schema):
    calls: int = Field(ge=1)
    per_s: float = Field(gt=0)


class RuleModel(_Schema):
    id: str = Field(min_length=1)
    effect: Effect
    match: MatchModel = MatchModel()
    description: str = ""
    approvers: Names = []
    approvals_required: int = Field(default=1, ge=1)
    credential: RuleCredentialModel | None = None
    rate: RateModel | None = None
    audit_args: Literal["digest", "full"] = "digest"


class PolicyFileModel(_Schema):
    tools: dict[str, ToolModel] = {}
    agents: dict[str, AgentModel] = {}
    rules: list[RuleModel] = []


# --------------------------------------------------------------------------- compiled values


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret source: `kind` env | file | vault, and its `ref` (a variable name, a file path, or
    `MOUNT/data/PATH#FIELD`)."""

    kind: Literal["env", "file", "vault"]
    ref: str

    @property
    def label(self) -> str:
        """What the audit may say about it (never the value)."""
        return f"{self.kind}:{self.ref}"


@dataclass(frozen=True, slots=True)
class OAuthSpec:
    """oauth2 and token_exchange: where and how guard gets a token for the tool."""

    token_url: str
    client_id: str
    client_auth: Literal["private_key_jwt", "client_secret_basic", "client_secret_post"]
    revocation_url: str | None = None
    client_secret: SecretRef | None = None
    resource: str | None = None
    audience: str | None = None
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    per_task: bool = True

    def scopes_for(self, action: str) -> tuple[str, ...]:
        return self.scopes.get(action, ())


@dataclass(frozen=True, slots=True)
class LeaseSpec:
    """vault_lease: a dynamic secret at `path`, its fields put into `headers` templates."""

    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class CredentialException:
    """A static secret's documented exception (credentials_hygiene): who owns it, why, until when."""

    owner: str
    reason: str
    expires: float  # unix time

    def view(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        return {"owner": self.owner, "reason": self.reason,
                "expires": datetime.fromtimestamp(self.expires, UTC).isoformat().replace("+00:00", "Z")}


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    mode: CredentialMode = "jwt"
    header: str = "Authorization"
    secret_env: str | None = None
    ttl_s: int | None = None
    secret: SecretRef | None = None
    format: str = "{secret}"
    oauth: OAuthSpec | None = None
    lease: LeaseSpec | None = None
    exception: CredentialException | None = None  # static (credentials_hygiene)


_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def compile_template(template: str) -> re.Pattern[str]:
    """Turn a template like `/notes/{id}` into a regex where each variable is one path segment."""
    parts: list[str] = []
    pos = 0
    for var in _TEMPLATE_VAR.finditer(template):
        parts.append(re.escape(template[pos : var.start()]))
        parts.append(f"(?P<{var.group(1)}>[^/]+)")
        pos = var.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A named method + path template; `{var}` matches exactly one path segment."""

    name: str
    method: str
    path: str
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", self.method.upper())
        object.__setattr__(self, "pattern", compile_template(self.path))

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method.upper() != self.method:
            return None
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    kind: Literal["http", "mcp"]
    upstream: str
    credential: CredentialSpec
    actions: tuple[ActionSpec, ...] = ()
    deny_methods: tuple[str, ...] = ()
    timeout_s: float = 30.0
    tls: tuple[str | None, str | None, str | None] | None = None  # (ca_file, cert_file, key_file)
    spiffe_id: str | None = None
    # content and tool integrity (guard.content)
    returns: frozenset[str] = frozenset()  # data labels its results give the task
    egress: bool = False  # its arguments leave the organisation
    redact: frozenset[str] = frozenset()  # finding kinds redacted from its results
    pin: Literal["tofu", "off", "sha256"] = "off"
    pins: Mapping[str, str] = field(default_factory=dict)  # pin == "sha256": tool name -> digest

    def match_action(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """The first declared action whose method and whole path template match."""
        for action in self.actions:
            found = action.match(method, path)
            if found is not None:
                return action.name, found
        return None

    def action_names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.actions)


@dataclass(frozen=True, slots=True)
class AgentEntry:
    pattern: str
    owner: str
    purpose: str = ""
    tools: tuple[str, ...] | None = None
    binding: Literal["optional", "required"] = "optional"

    def matches(self, sub: str) -> bool:
        return fnmatchcase(sub, self.pattern)


@dataclass(frozen=True, slots=True)
class RateSpec:
    calls: int
    per_s: float


@frozen
class CallContext:
    """Everything a rule may look at for one call."""

    agent: str
    tool: str
    action: str
    args: Any = None
    task_purpose: str = ""
    task_labels: Mapping[str, str] = field(default_factory=dict)
    allowed_tools: frozenset[str] | None = None
    chain: tuple[str, ...] = ()
    history: frozenset[str] = frozenset()
    # content and tool integrity (guard.content)
    task_data: frozenset[str] = frozenset()  # the task's data labels
    content_args: frozenset[str] = frozenset()  # finding kinds in the arguments
    content_result: frozenset[str] = frozenset()  # finding kinds in the result (evaluated on the answer)
    uninspected: bool = False
    flow: bool = False  # the arguments carry a value remembered from a result (exfiltration)
    unusual: bool = False  # unlike the agent's baseline (guard.signals.baseline)

    @property
    def depth(self) -> int:
        return len(self.chain)

    @property
    def caller(self) -> str | None:
        return self.chain[-1] if self.chain else None

    @property
    def is_loop(self) -> bool:
        return self.tool in self.chain


@frozen
class Decision:
    effect: Effect
    rule_id: str | None
    reason: Reason
    approvers: tuple[str, ...] = ()
    approvals_required: int = 1
    credential_ttl_s: int | None = None
    rates: tuple[tuple[str, int, float], ...] = ()
    audit_args: Literal["digest", "full"] = "digest"
    allow_flow: bool = False  # the deciding rule lets a remembered value leave (content: {allow_flow: true})
    content_args: bool = False  # the deciding rule looks at findings in the arguments
