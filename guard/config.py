"""Configuration: pydantic models; `load_config` is the only place the environment is read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator, model_validator

from guard.errors import ConfigError

__all__ = ["Config", "load_config"]


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
    redirect_uris: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:*/callback",
                                                              "http://localhost:*/callback"])


class OAuthCfg(_Section):
    """guard as the authorization server of /mcp/{tool} (guard.oauth)."""

    registration: RegistrationCfg = Field(default_factory=RegistrationCfg)
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
    user_claim: str = "email"  # who the person is in tasks and audit (falls back to sub)
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
    environ: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)  # for *_env secrets
    source: str = "<embedded default>"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.listen.tls is not None else "http"
        return self.public_url or f"{scheme}://{self.listen.host}:{self.listen.port}"

    @property
    def dev_mode(self) -> bool:
        return self.dev_issuer if self.dev_issuer is not None else not self.issuers

    @property
    def x509_issuers(self) -> list[X509IssuerCfg]:
        return [i.x509 for i in self.issuers if i.x509 is not None]


_SECTIONS = ("listen", "store", "audit", "signing", "approvals", "limits", "retention")
_TOP = ("public_url", "issuer", "policies", "dev_issuer", "dev_key_file")


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith("GUARD_") or name == "GUARD_CONFIG":
            continue
        rest = name[len("GUARD_"):].lower()
        if rest in _TOP:
            out[rest] = value
            continue
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1 :]] = value
                break
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(str(path), "", f"YAML syntax error: {getattr(e, 'problem', e)}", line) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "top level must be a mapping")
    return data


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None, secrets: bool = True) -> Config:
    """Read the config file (or the embedded default), apply GUARD_* overrides, resolve secrets.
    `secrets=False` (the CLI's commands other than `serve`) does not require the webhook secrets:
    reading an audit trail or minting a dev token never signs a webhook."""
    env = dict(os.environ if env is None else env)
    path = path or env.get("GUARD_CONFIG")
    raw: dict[str, Any] = {}
    source = "<embedded default>"
    if path:
        raw = _read_yaml(Path(path))
        source = str(path)
    raw = _merge(raw, _env_overrides(env))
    raw["source"] = source
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(source, key, err["msg"]) from e
    if cfg.store.url.startswith("memory://") and not cfg.audit.dir:
        raise ConfigError(source, "audit.dir", "the memory store keeps nothing durable: an audit folder is required")
    for i, hook in enumerate(cfg.approvals.webhooks if secrets else ()):
        if not env.get(hook.secret_env):
            raise ConfigError(source, f"approvals.webhooks[{i}].secret_env", f"{hook.secret_env} is not set")
    secret = cfg.sso.client_secret if cfg.sso is not None else None
    if secret is not None and (secret.env is None) == (secret.file is None):
        raise ConfigError(source, "sso.client_secret", "name exactly one source: env or file")
    if secret is not None and secret.env is not None and not env.get(secret.env):
        raise ConfigError(source, "sso.client_secret.env", f"{secret.env} is not set")
    # secrets named by *_env keys (webhooks, static credentials) are looked up in this snapshot
    return cfg.model_copy(update={"environ": env})
