"""What `guard serve` (and `guard config check`, `guard policy check`) check before the guard
listens, beyond what the config and the policies check alone: what the policies' credentials and
redactions need from guard.yaml, the door's TLS files and the x509 issuers' trust bundles. Each
failure is a ConfigError naming the file and key."""

from __future__ import annotations

from guard.config import Config
from guard.content.detectors import KIND_OF
from guard.credentials.hygiene import require_exceptions
from guard.errors import ConfigError
from guard.identity.mtls import ServerTLS, pem_file_problem
from guard.log import get_logger
from guard.policy import PolicySet, load_policies

__all__ = ["check_credentials", "check_redact", "check_trust_bundles", "load_checked_policies", "server_tls"]

log = get_logger("guard.app")


def check_credentials(cfg: Config, policies: PolicySet) -> None:
    """What the policies' credential blocks need from guard.yaml and the environment: env
    secrets set, and `secrets.vault` configured for vault secrets and leases."""
    for name, tool in policies.tools.items():
        spec = tool.credential
        refs = [(r, key) for r, key in ((spec.secret, "secret"),
                                        (spec.oauth.client_secret if spec.oauth else None, "client_secret")) if r]
        for ref, key in refs:
            if ref.kind == "env" and not cfg.environ.get(ref.ref):
                key = "secret_env" if spec.secret_env else f"{key}.env"
                raise ConfigError(str(cfg.policies), f"tools.{name}.credential.{key}",
                                  f"{ref.ref} is not set in the environment")
        needs_vault = spec.mode == "vault_lease" or any(ref.kind == "vault" for ref, _ in refs)
        if needs_vault and cfg.secrets.vault is None:
            raise ConfigError(str(cfg.policies), f"tools.{name}.credential",
                              f"mode {spec.mode} reads from OpenBao/Vault: configure secrets.vault in {cfg.source}")


def check_redact(cfg: Config, policies: PolicySet) -> None:
    """A tool's `redact` names finding kinds whose detectors `inspect.detectors` must list."""
    listed = {KIND_OF[d] for d in cfg.inspect.detectors}
    for name, spec in policies.tools.items():
        missing = sorted(spec.redact - listed)
        if missing:
            raise ConfigError(str(cfg.policies), f"tools.{name}.redact",
                              f"{', '.join(missing)}: its detector is not in inspect.detectors of {cfg.source}")


def load_checked_policies(cfg: Config) -> PolicySet:
    """Load and compile the policies; what their credentials need must be configured."""
    policies = load_policies(cfg.policies)
    check_credentials(cfg, policies)
    check_redact(cfg, policies)
    require_exceptions(cfg, policies)  # credentials_hygiene.require_exceptions
    configured = {hook.name for hook in cfg.approvals.webhooks}
    for rule in policies.rules:
        missing = sorted(set(rule.approvers) - configured)
        if missing:
            log.warning("approvers_unconfigured", rule_id=rule.id, webhooks=missing,
                        detail="step-ups of this rule reach no approver until the webhook is configured")
    return policies


def server_tls(cfg: Config) -> ServerTLS | None:
    """listen.tls, its files read now: a bad one stops the start, naming it."""
    t = cfg.listen.tls
    if t is None:
        return None
    import ssl

    files = [("cert_file", t.cert_file), ("key_file", t.key_file)]
    files += [("client_ca_file", t.client_ca_file)] if t.client_ca_file else []
    problem = pem_file_problem(files)
    if problem is not None:
        key, path, why = problem
        raise cfg.error(("listen", "tls", key), f"{path}: {why}")
    try:
        return ServerTLS(t.cert_file, t.key_file, t.client_ca_file, t.client_auth)
    except (OSError, ssl.SSLError, ValueError) as e:
        reason = getattr(e, "reason", None) or str(e)
        raise cfg.error(("listen", "tls"), f"{t.cert_file}, {t.key_file}"
                        f"{', ' + t.client_ca_file if t.client_ca_file else ''}: cannot be loaded together: "
                        f"{reason}") from None


def check_trust_bundles(cfg: Config) -> None:
    """Every x509 issuer's trust bundle holds certificates now: a missing one would start a guard
    that refuses every SVID with nothing to say why."""
    from cryptography import x509

    for i, entry in enumerate(cfg.issuers):
        if entry.x509 is None:
            continue
        loc = ("issuers", i, "x509", "trust_bundle_file")
        path = entry.x509.trust_bundle_file
        problem = pem_file_problem([("trust_bundle_file", path)])
        if problem is not None:
            raise cfg.error(loc, f"{path}: {problem[2]}")
        try:
            with open(path, "rb") as f:
                x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError):
            raise cfg.error(loc, f"{path}: no PEM certificate in it") from None
