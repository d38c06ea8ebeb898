"""Discovery: where an MCP client learns that guard protects `/mcp/{tool}` and is its
authorization server (RFC 9728, RFC 8414), and the `WWW-Authenticate` challenge of a 401."""

from __future__ import annotations

from typing import Any

from guard.config import Config

__all__ = [
    "as_issuer",
    "resource_metadata",
    "resource_url",
    "server_metadata",
    "tool_of_resource",
    "www_authenticate",
]


def as_issuer(cfg: Config) -> str:
    """The authorization server's issuer identifier: guard's public URL (RFC 8414 wants a URL,
    and the `iss` of authorization responses must equal it, RFC 9207)."""
    return cfg.base_url.rstrip("/")


def resource_url(cfg: Config, tool: str) -> str:
    """The MCP endpoint of a tool: the `resource` (RFC 8707) a client asks a token for."""
    return f"{as_issuer(cfg)}/mcp/{tool}"


def tool_of_resource(cfg: Config, resource: str) -> str | None:
    """The tool a resource URL names, or None when it is not one of guard's MCP endpoints."""
    prefix = f"{as_issuer(cfg)}/mcp/"
    if not resource.startswith(prefix):
        return None
    tool = resource[len(prefix):]
    return tool if tool and "/" not in tool and "?" not in tool and "#" not in tool else None


def www_authenticate(cfg: Config, tool: str, error: str | None = None) -> str:
    metadata = f"{as_issuer(cfg)}/.well-known/oauth-protected-resource/mcp/{tool}"
    out = f'Bearer resource_metadata="{metadata}"'
    if error:
        out += f', error="{error}"'
    return out


def resource_metadata(cfg: Config, tool: str) -> dict[str, Any]:
    return {
        "resource": resource_url(cfg, tool),
        "authorization_servers": [as_issuer(cfg)],
        "scopes_supported": [],
        "bearer_methods_supported": ["header"],
        "resource_name": f"guard: {tool}",
    }


def server_metadata(cfg: Config) -> dict[str, Any]:
    base = as_issuer(cfg)
    doc: dict[str, Any] = {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": cfg.oauth.metadata_documents,
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": [],
    }
    if cfg.oauth.registration.mode == "open":
        doc["registration_endpoint"] = f"{base}/oauth/register"
    return doc
