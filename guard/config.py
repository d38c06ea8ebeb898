"""Configuration: pydantic models; `load_config` is the only place the environment is read."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from guard.errors import ConfigError
from guard.yamlfile import LineMap, Loc, format_key, read_yaml, validation_error

__all__ = ["Config", "is_loopback", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenTLS(_Section):
    """The guard's door over TLS (guard.identity.mtls); every file is re-read when it changes."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # the trust bundle client certificates (X.509-SVIDs) chain to
    client_auth: Literal["optional", "required"] = "optional"


class Listen(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls: ListenTLS | None = None


class StoreCfg(_Section):
    url: str = "memory://"
    wait_replicas: NonNegativeInt = 0  # Redis: each write waits for this many replicas (WAIT)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("memory://", "redis://", "rediss://", "unix://", "redis+cluster://", "redis+sentinel://")):
            raise ValueError("must be memory://, redis://host:port/db, redis+cluster://host:port,…/ or "
                             "redis+sentinel://host:port,…/MASTER_NAME/DB")
        from guard.stores.redis.url import parse_topology

        parse_topology(v)  # a malformed cluster or sentinel URL stops start-up, saying why
        return v


class AuditCfg(_Section):
    dir: str | None = "./var/audit"
    fsync: bool = True


class SigningCfg(_Section):
    key_file: str = "./var/signing-key.json"
    algorithm: str = "EdDSA"
    rotate_s: float | None = Field(None, gt=0)  # automatic rotation (guard.identity.keyring); None: `guard keys rotate`

    @field_validator("algorithm")
    @classmethod
    def _alg(cls, v: str) -> str:
        if v not in ("EdDSA", "ES256"):
            raise ValueError("must be EdDSA or ES256")
        return v


class X509IssuerCfg(_Section):
    """Agents proving who they are with an X.509-SVID over mTLS (guard.identity.mtls)."""

    trust_bundle_file: str
    spiffe_id: str = Field(min_length=1)  # the SPIFFE IDs admitted, a glob: spiffe://acme/agent/*


class IssuerCfg(_Section):
    issuer: str = ""  # empty only for an x509 entry
    x509: X509IssuerCfg | None = None
    audience: str = "guard"
    jwks_file: str | None = None
    jwks_url: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["ES256", "RS256", "EdDSA"])
    roles_claim: str = "roles"
    leeway_s: int = 30
    jwks_refetch_min_s: float = Field(30.0, ge=0)  # an unknown kid refetches the JWKS at most this often
    jwks_max_age_s: float = Field(3600.0, gt=0)  # the JWKS is refreshed when older than this

    @field_validator("algorithms")
    @classmethod
    def _algs(cls, v: list[str]) -> list[str]:
        allowed = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
        bad = [a for a in v if a not in allowed]
        if bad:
            raise ValueError(f"algorithms not allowed for an asymmetric issuer: {bad}")
        if not v:
            raise ValueError("at least one algorithm")
        return v

    @model_validator(mode="after")
    def _kind(self) -> IssuerCfg:
        if bool(self.issuer) == (self.x509 is not None):
            raise ValueError("an issuer entry has either `issuer` (tokens) or `x509` (SVIDs over mTLS)")
        return self


class WebhookCfg(_Section):
    name: str
    url: str
    secret_env: str


class ApprovalsCfg(_Section):
    ttl_s: int = Field(900, gt=0)
    max_wait_s: int = Field(60, ge=0)
    webhooks: list[WebhookCfg] = Field(default_factory=list)


class LimitsCfg(_Section):
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_chain_depth: int = Field(3, ge=0)
    task_ttl_s: int = Field(3600, gt=0)
    task_idle_s: int = Field(900, gt=0)
    credential_ttl_s: int = Field(30, gt=0)
    upstream_timeout_s: float = Field(30.0, gt=0)
    read_timeout_s: float = Field(15.0, gt=0)


class RegistrationCfg(_Section):
    mode: Literal["off", "open"] = "off"  # open: RFC 7591 dynamic client registration
    # `*` in a pattern stands for a port (1-5 digits) and nothing else
    redirect_uris: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:*/callback",
                                                              "http://localhost:*/callback"])
    max_clients: int = Field(1000, gt=0)  # registered clients kept at once (over: 400 invalid_client_metadata)
    max_redirect_uris: int = Field(5, gt=0)  # per client
    max_metadata_bytes: int = Field(8192, gt=0)  # the registration request's body
    per_source_per_min: int = Field(10, gt=0)  # registrations per client address and minute (over: 429)


class OAuthCfg(_Section):
    """guard as the authorization server of /mcp/{tool} (guard.oauth)."""

    registration: RegistrationCfg = Field(default_factory=RegistrationCfg)  # type: ignore[arg-type]
    metadata_documents: bool = True  # client_id as an https URL (Client ID Metadata Document)
    code_ttl_s: int = Field(60, gt=0, le=600)
    consent_ttl_s: int = Field(600, gt=0)  # an authorization request waits this long for sign-in and consent
    access_ttl_s: int = Field(900, gt=0)  # an access token lives at most this long (and never past its task)
    refresh_ttl_s: int = Field(86400, gt=0)  # a refresh token lives at most this long (and never past its task)
    client_ttl_s: int = Field(30 * 86400, gt=0)  # a dynamically registered client is kept this long
    metadata_max_bytes: int = Field(5120, gt=0)
    metadata_timeout_s: float = Field(5.0, gt=0)


class SecretSource(_Section):
    env: str | None = None
    file: str | None = None


class SsoCfg(_Section):
    """OpenID Connect sign-in for people (the consent page, /ui, my delegations)."""

    issuer: str
    client_id: str
    client_secret: SecretSource | None = None  # none: a public client (PKCE only)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email"])
    roles_claim: str = "roles"
    algorithms: list[str] = Field(default_factory=lambda: ["ES256", "RS256", "EdDSA", "PS256"])
    session_ttl_s: int = Field(1800, gt=0)


class VaultAuthCfg(_Section):
    """guard's own login to OpenBao / Vault: a token file, AppRole, or a JWT guard signs itself."""

    method: Literal["token", "approle", "jwt"] = "token"
    token_file: str | None = None  # token: re-read when it changes
    role_id_file: str | None = None  # approle
    secret_id_file: str | None = None
    role: str | None = None  # jwt: the role of the jwt auth mount
    mount: str | None = None  # the auth mount (default: approle, jwt)
    audience: str = "openbao"  # jwt: aud of the login JWT (the role's bound_audiences)

    @model_validator(mode="after")
    def _needs(self) -> VaultAuthCfg:
        needs = {"token": ("token_file",), "approle": ("role_id_file", "secret_id_file"), "jwt": ("role",)}
        missing = [k for k in needs[self.method] if not getattr(self, k)]
        if missing:
            raise ValueError(f"auth method {self.method} needs {', '.join(missing)}")
        return self


class VaultCfg(_Section):
    url: str
    auth: VaultAuthCfg
    cache_s: float = Field(60.0, ge=0)  # a KV read is reused this long
    timeout_s: float = Field(5.0, gt=0)  # each request to OpenBao


class SecretsCfg(_Section):
    vault: VaultCfg | None = None


class RetentionCfg(_Section):
    ended_task_s: float | None = Field(604800.0, gt=0)  # an ended task's state is deleted this long after; null: kept
    audit_s: float | None = Field(None, gt=0)  # how long a trail is kept after its task ended; null: forever

    @field_validator("ended_task_s", "audit_s", mode="before")
    @classmethod
    def _null(cls, v: object) -> object:
        return None if isinstance(v, str) and v.strip().lower() in ("", "null", "none") else v


# --- inspect (content detectors, guard.content) ------------------------------------------------


class InspectCfg(_Section):
    """`inspect`: the content detectors that run on arguments and results (none by default)."""

    detectors: list[Literal["secrets", "pii"]] = Field(default_factory=list)
    max_bytes: int = Field(1048576, ge=1)  # text inspected per argument set or result; beyond: `uninspected`


# --- end inspect ---------------------------------------------------------------------------------


# -- posture and lifecycle signals (guard.signals): OpenID Shared Signals received and sent -------------
class SignalDeliveryCfg(_Section):
    method: Literal["push", "poll"] = "push"  # push: RFC 8935 at POST /ssf/events; poll: RFC 8936 against `url`
    url: str | None = None  # poll: the transmitter's polling endpoint
    interval_s: float = Field(5.0, gt=0, le=10)  # poll: at least every 10 s
    max_events: int = Field(50, gt=0, le=1000)  # poll: maxEvents per request
    token: SecretSource | None = None  # poll: a bearer token the transmitter asks for

    @model_validator(mode="after")
    def _url(self) -> SignalDeliveryCfg:
        if self.method == "poll" and not self.url:
            raise ValueError("poll delivery needs the transmitter's polling `url`")
        return self


class TransmitterCfg(_Section):
    """A Shared Signals transmitter guard listens to (an IdP, a device manager)."""

    issuer: str = Field(min_length=1)
    jwks_uri: str | None = None
    jwks_file: str | None = None
    audience: str = Field(min_length=1)  # the SET's aud that names this guard
    delivery: SignalDeliveryCfg = Field(default_factory=SignalDeliveryCfg)  # type: ignore[arg-type]
    algorithms: list[str] = Field(default_factory=lambda: ["ES256", "RS256", "EdDSA", "PS256"])
    configuration_url: str | None = None  # its /.well-known/ssf-configuration (stream status, verification)
    jwks_refetch_min_s: float = Field(30.0, ge=0)  # an unknown kid refetches the JWKS at most this often

    @field_validator("algorithms")
    @classmethod
    def _algs(cls, v: list[str]) -> list[str]:
        allowed = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
        if not v or set(v) - allowed:
            raise ValueError(f"asymmetric algorithms only (never none or HS*), at least one: {sorted(allowed)}")
        return v

    @model_validator(mode="after")
    def _keys(self) -> TransmitterCfg:
        if (self.jwks_uri is None) == (self.jwks_file is None):
            raise ValueError("name the transmitter's keys: jwks_uri or jwks_file (exactly one)")
        return self


class ReceiverCfg(_Section):
    """Where guard sends its own SETs (CAEP session-revoked), RFC 8935 push."""

    url: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    token: SecretSource | None = None  # a bearer token the receiver asks for
    attempts: int = Field(5, gt=0, le=20)  # each SET is tried this often, with backoff, then given up (audited)


class SignalsCfg(_Section):
    transmitters: list[TransmitterCfg] = Field(default_factory=list)
    receivers: list[ReceiverCfg] = Field(default_factory=list)
    max_set_bytes: int = Field(65536, gt=0, le=1_048_576)  # a pushed SET larger than this is refused (413)
    max_iat_age_s: float = Field(86400.0, gt=0)  # a SET issued longer ago is stale
    max_iat_skew_s: float = Field(300.0, ge=0)  # a SET issued further in the future is stale


class CredentialsHygieneCfg(_Section):
    """How old a static secret may be, and whether each needs a documented exception (guard.credentials.hygiene)."""

    max_secret_age_s: float | None = Field(None, gt=0)  # None: ages are shown, never enforced
    on_stale: Literal["deny", "warn"] = "deny"
    require_exceptions: bool = False  # every static secret declares exception: {owner, reason, expires}


class BaselineCfg(_Section):
    """Agents' baselines (guard.signals.baseline): learn this long, then flag calls unlike them."""

    learn_s: float = Field(gt=0)
# -- end of signals ------------------------------------------------------------------------------------
class TelemetryCfg(_Section):
    """Traces over OTLP/HTTP (guard.telemetry): one span per call, a child span per stage."""

    otlp_endpoint: str = "http://127.0.0.1:4318"  # the collector's base URL; traces go to <it>/v1/traces
    service_name: str = Field("guard", min_length=1)
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)  # of the traces that start here; a caller's choice is kept

    @field_validator("otlp_endpoint")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP/HTTP)")
        return v.rstrip("/")


class Config(_Section):
    listen: Listen = Field(default_factory=Listen)  # type: ignore[arg-type]
    public_url: str | None = None
    issuer: str = "urn:guard"
    store: StoreCfg = Field(default_factory=StoreCfg)
    audit: AuditCfg = Field(default_factory=AuditCfg)
    signing: SigningCfg = Field(default_factory=SigningCfg)  # type: ignore[arg-type]
    policies: str = "./policies"
    issuers: list[IssuerCfg] = Field(default_factory=list)
    dev_issuer: bool | None = None  # None: on exactly when no issuers are configured
    dev_key_file: str = "./var/dev-issuer-key.json"
    approvals: ApprovalsCfg = Field(default_factory=ApprovalsCfg)  # type: ignore[arg-type]
    limits: LimitsCfg = Field(default_factory=LimitsCfg)  # type: ignore[arg-type]
    oauth: OAuthCfg = Field(default_factory=OAuthCfg)  # type: ignore[arg-type]
    sso: SsoCfg | None = None
    secrets: SecretsCfg = Field(default_factory=SecretsCfg)  # credential providers' secrets manager
    retention: RetentionCfg = Field(default_factory=RetentionCfg)  # type: ignore[arg-type]
    inspect: InspectCfg = Field(default_factory=InspectCfg)  # type: ignore[arg-type]  # content detectors
    signals: SignalsCfg | None = None  # Shared Signals received and sent (guard.signals); None: off
    credentials_hygiene: CredentialsHygieneCfg | None = None  # static secrets' age and exceptions; None: off
    baseline: BaselineCfg | None = None  # agents' baselines: match.agent.unusual; None: off (costs nothing)
    telemetry: TelemetryCfg | None = None  # off unless set (guard.telemetry)
    environ: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)  # for *_env secrets
    source: str = "<embedded default>"
    _lines: LineMap = PrivateAttr(default_factory=LineMap)  # where each key is written in `source`
    _env_keys: dict[Loc, str] = PrivateAttr(default_factory=dict)  # keys set by GUARD_* variables

    def error(self, loc: Loc, reason: str) -> ConfigError:
        """A problem with the value at `loc` (`("issuers", 0, "jwks_file")`): names the
        environment variable that set it, or the config file and the key's line."""
        variable = self._env_keys.get(loc)
        if variable is not None:
            return ConfigError(variable, "", reason)
        written = self.source != _EMBEDDED and (*loc[:1],) in self._lines.lines  # a default: no line
        return ConfigError(self.source, format_key(loc), reason, self._lines.line(loc) if written else None)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.listen.tls is not None else "http"
        return self.public_url or f"{scheme}://{self.listen.host}:{self.listen.port}"

    @property
    def dev_mode(self) -> bool:
        """Development mode: the development issuer is trusted (`dev_issuer: true`, or no
        `issuers` and no `sso`). guard then listens on a loopback address only."""
        return self.dev_issuer if self.dev_issuer is not None else not self.issuers and self.sso is None

    @property
    def dev_sign_in(self) -> bool:
        """The development sign-in of people (`/login/dev`): development mode with no `issuers`
        and no `sso` at all, never next to a real identity provider."""
        return self.dev_mode and not self.issuers and self.sso is None

    @property
    def x509_issuers(self) -> list[X509IssuerCfg]:
        return [i.x509 for i in self.issuers if i.x509 is not None]


_EMBEDDED = "<embedded default>"
_SECTIONS = ("listen", "store", "audit", "signing", "approvals", "limits", "retention", "telemetry")
_TOP = ("public_url", "issuer", "policies", "dev_issuer", "dev_key_file")


def _env_overrides(env: dict[str, str]) -> tuple[dict[str, Any], dict[Loc, str]]:
    """The GUARD_* values as a config dict, and the variable that set each key."""
    out: dict[str, Any] = {}
    names: dict[Loc, str] = {}
    for name, value in env.items():
        if not name.startswith("GUARD_") or name == "GUARD_CONFIG":
            continue
        rest = name[len("GUARD_"):].lower()
        if rest in _TOP:
            out[rest] = value
            names[(rest,)] = name
            continue
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                out.setdefault(section, {})[key] = value
                names[(section, key)] = name
                break
    return out, names


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def is_loopback(host: str) -> bool:
    """A host name or address that only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path) -> tuple[dict[str, Any], LineMap]:
    """The file's mapping and the line of each key (read as policy files are: the same errors)."""
    data, lines = read_yaml(path)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "top level must be a mapping", 1)
    return data, lines


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, secrets: bool = True) -> Config:
    """Read the config file (or the embedded default), apply GUARD_* overrides, resolve secrets.
    `secrets=False` (the CLI's commands other than `serve`) does not require the webhook secrets:
    reading an audit trail or minting a dev token never signs a webhook."""
    env = dict(os.environ if env is None else env)
    path = path or env.get("GUARD_CONFIG")
    raw: dict[str, Any] = {}
    lines = LineMap()
    source = _EMBEDDED
    if path:
        raw, lines = _read_yaml(Path(path))
        source = str(path)
    for internal in ("source", "environ"):  # fields of the model, not keys of the file
        if internal in raw:
            raise ConfigError(source, internal, "unknown key", lines.line((internal,)))
    overrides, env_keys = _env_overrides(env)
    raw = _merge(raw, overrides)
    raw["source"] = source
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        for loc, variable in env_keys.items():
            if tuple(err["loc"][: len(loc)]) == loc:  # a value an environment variable set
                reason = validation_error(variable, lines, e).reason
                raise ConfigError(variable, "", reason) from None
        raise validation_error(source, lines if source != _EMBEDDED else LineMap(), e) from None
    cfg._lines = lines
    cfg._env_keys = env_keys
    if cfg.store.url.startswith("memory://") and not cfg.audit.dir:
        raise cfg.error(("audit", "dir"), "the memory store keeps nothing durable: an audit folder is required")
    for i, hook in enumerate(cfg.approvals.webhooks if secrets else ()):
        if not env.get(hook.secret_env):
            raise cfg.error(("approvals", "webhooks", i, "secret_env"), f"{hook.secret_env} is not set")
    if cfg.dev_mode and not is_loopback(cfg.listen.host):
        raise cfg.error(("listen", "host"), (
            f"{cfg.listen.host!r} is not a loopback address: in development mode (dev_issuer: true, "
            "or no issuers and no sso) guard listens on loopback only; configure issuers to serve a network"))
    secret = cfg.sso.client_secret if cfg.sso is not None else None
    if secret is not None and (secret.env is None) == (secret.file is None):
        raise cfg.error(("sso", "client_secret"), "name exactly one source: env or file")
    if secret is not None and secret.env is not None and not env.get(secret.env):
        raise cfg.error(("sso", "client_secret", "env"), f"{secret.env} is not set")
    # secrets named by *_env keys (webhooks, static credentials) are looked up in this snapshot
    return cfg.model_copy(update={"environ": env})
