"""OAuth protocol errors (RFC 6749 §5.2, RFC 7591 §3.2.2): `{error, error_description}` bodies,
not problem details, because OAuth clients read these."""

from __future__ import annotations

__all__ = ["OAuthError"]


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
