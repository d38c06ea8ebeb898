"""structlog configuration: JSON lines (or console in development), with redaction."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["ProtocolErrorFilter", "configure_logging", "redact"]

_SECRET_KEYS = frozenset(
    {"token", "task_token", "authorization", "secret", "password", "credential", "txn_token",
     "cookie", "args", "arguments", "body", "api_key", "signature"}
)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop tokens, secrets and raw arguments: logs carry digests and ids only."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


class ProtocolErrorFilter(logging.Filter):
    """aiohttp logs a malformed request (smuggling shapes, bad header characters, over-long
    lines) with the offending bytes, which may hold a token: keep only the error's type."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = json.dumps({"event": "http_request_rejected", "level": "warning",
                                     "status": exc.code, "error": type(exc).__name__})
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def configure_logging(json_logs: bool = True, level: str = "INFO") -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolErrorFilter) for f in server_log.filters):
        server_log.addFilter(ProtocolErrorFilter())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if json_logs:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),  # one write per line, no print()
        cache_logger_on_first_use=True,
    )
