"""The GuardError tree and its RFC 9457 problem-details rendering.

    GuardError                       500 internal
    ├── BadRequest                   400 bad_request
    ├── Unauthenticated              401 unauthenticated
    │   └── InvalidDpopProof         401 unauthenticated, WWW-Authenticate: DPoP error="invalid_dpop_proof"
    ├── Forbidden                    403 forbidden
    │   ├── UnregisteredAgent        403 unregistered_agent
    │   ├── AgentSuspended           403 agent_suspended
    │   ├── Denied                   403 denied
    │   ├── ContentBlocked           403 content_blocked
    │   ├── ExfiltrationBlocked      403 exfiltration_blocked
    │   ├── ToolChanged              403 tool_changed
    │   ├── UnknownAction            403 unknown_action
    │   ├── ApprovalRequired         403 approval_required
    │   ├── ApprovalDenied           403 approval_denied
    │   ├── TaskInactive             403 task_inactive
    │   ├── ChainTooDeep             403 chain_too_deep
    │   └── TxnInactive              403 txn_inactive
    ├── NotFound                     404 not_found
    │   └── UnknownTool              404 unknown_tool
    ├── MethodNotAllowed             405 method_not_allowed
    ├── ApprovalClosed               409 approval_closed
    ├── DuplicateDecision            409 duplicate_decision
    ├── PayloadTooLarge              413 payload_too_large
    ├── RateLimited                  429 rate_limited
    │   └── BudgetExhausted          429 budget_exhausted
    ├── UpstreamUnavailable          502 upstream_unavailable
    ├── StoreUnavailable             503 store_unavailable
    ├── AuditUnavailable             503 audit_unavailable
    ├── CredentialUnavailable        503 credential_unavailable
    │   ├── CredentialStale          503 credential_stale (credentials_hygiene)
    │   └── CredentialExceptionExpired 503 credential_exception_expired
    ├── UpstreamTimeout              504 upstream_timeout
    └── HTTPProblem                  4xx/5xx: an aiohttp HTTP error (a malformed request line…)

ConfigError is separate: it is raised at load time and never reaches HTTP.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

DPOP_ALGS = ("ES256", "ES384", "EdDSA", "RS256", "PS256")  # the signature algorithms a DPoP proof may use

__all__ = [
    "DPOP_ALGS",
    "AgentSuspended",
    "ApprovalClosed",
    "ApprovalDenied",
    "ApprovalRequired",
    "AuditUnavailable",
    "BadRequest",
    "BudgetExhausted",
    "ChainTooDeep",
    "ConfigError",
    "ContentBlocked",
    "CredentialExceptionExpired",
    "CredentialStale",
    "CredentialUnavailable",
    "Denied",
    "DuplicateDecision",
    "ExfiltrationBlocked",
    "Forbidden",
    "GuardError",
    "HTTPProblem",
    "InvalidDpopProof",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "StoreUnavailable",
    "TaskInactive",
    "ToolChanged",
    "TxnInactive",
    "Unauthenticated",
    "UnknownAction",
    "UnknownTool",
    "UnregisteredAgent",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ConfigError(Exception):
    """A bad config or policy file: names the file, the key (or line) and the reason."""

    def __init__(self, file: str, key: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class GuardError(Exception):
    """Base of every error the guard answers with problem details."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
        self.headers: dict[str, str] = {}

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:guard:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        body.update(self.extra)
        return body


class BadRequest(GuardError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthenticated(GuardError):
    status, code, title = 401, "unauthenticated", "Unauthenticated"


class InvalidDpopProof(Unauthenticated):
    """401 unauthenticated with `WWW-Authenticate: DPoP error="invalid_dpop_proof"` (RFC 9449)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = f'DPoP error="invalid_dpop_proof", algs="{" ".join(DPOP_ALGS)}"'


class Forbidden(GuardError):
    status, code, title = 403, "forbidden", "Forbidden"


class UnregisteredAgent(Forbidden):
    code, title = "unregistered_agent", "Agent not registered"


class AgentSuspended(Forbidden):
    code, title = "agent_suspended", "Agent suspended"


class Denied(Forbidden):
    code, title = "denied", "Denied by policy"


class ContentBlocked(Forbidden):
    code, title = "content_blocked", "Content blocked"


class ExfiltrationBlocked(Forbidden):
    code, title = "exfiltration_blocked", "Exfiltration blocked"


class ToolChanged(Forbidden):
    code, title = "tool_changed", "Tool definition changed"


class UnknownAction(Forbidden):
    code, title = "unknown_action", "Unknown action"


class ApprovalRequired(Forbidden):
    code, title = "approval_required", "Approval required"

    @property
    def approval_id(self) -> str | None:
        """The approval to wait for (guard.client raises this with the guard's answer)."""
        found = self.extra.get("approval_id")
        return str(found) if found is not None else None


class ApprovalDenied(Forbidden):
    code, title = "approval_denied", "Approval denied or expired"


class TaskInactive(Forbidden):
    code, title = "task_inactive", "Task inactive"


class ChainTooDeep(Forbidden):
    code, title = "chain_too_deep", "Chain too deep"


class TxnInactive(Forbidden):
    code, title = "txn_inactive", "Transaction token inactive"


class NotFound(GuardError):
    status, code, title = 404, "not_found", "Not found"


class UnknownTool(NotFound):
    code, title = "unknown_tool", "Unknown tool"


class MethodNotAllowed(GuardError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class ApprovalClosed(GuardError):
    status, code, title = 409, "approval_closed", "Approval no longer pending"


class DuplicateDecision(GuardError):
    status, code, title = 409, "duplicate_decision", "Approver already decided"


class PayloadTooLarge(GuardError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class RateLimited(GuardError):
    status, code, title = 429, "rate_limited", "Rate limited"


class BudgetExhausted(RateLimited):
    code, title = "budget_exhausted", "Task budget exhausted"


class UpstreamUnavailable(GuardError):
    status, code, title = 502, "upstream_unavailable", "Upstream unavailable"


class StoreUnavailable(GuardError):
    status, code, title = 503, "store_unavailable", "State store unavailable"


class AuditUnavailable(GuardError):
    status, code, title = 503, "audit_unavailable", "Audit trail unavailable"


class CredentialUnavailable(GuardError):
    status, code, title = 503, "credential_unavailable", "Credential unavailable"


# -- credentials hygiene (guard.credentials.hygiene) ----------------------------------------------------
class CredentialStale(CredentialUnavailable):
    status, code, title = 503, "credential_stale", "Credential past its rotation age"


class CredentialExceptionExpired(CredentialUnavailable):
    status, code, title = 503, "credential_exception_expired", "Credential exception expired"
# -- end of credentials hygiene ------------------------------------------------------------------------


class UpstreamTimeout(GuardError):
    status, code, title = 504, "upstream_timeout", "Upstream timeout"


class HTTPProblem(GuardError):
    """An aiohttp HTTP error (e.g. a malformed request line) rendered as problem details."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = status

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        code = "bad_request" if self.http_status < 500 else "internal"
        body.update(type=f"urn:guard:error:{code}", status=self.http_status, code=code, title=_phrase(self.http_status))
        return body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Bad request" if status < 500 else "Internal error"
