"""structlog configuration: JSON lines (or console in development), with redaction."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from guard.canonical import json_encoder

__all__ = ["ProtocolErrorFilter", "configure_logging", "redact"]

_SECRET_KEYS = frozenset(
    {"token", "task_token", "authorization", "secret", "password", "credential", "txn_token",
     "cookie", "args", "arguments", "body", "api_key", "signature"}
)


_second: tuple[int, str] = (-1, "")  # the last whole second stamped, and its ISO 8601 prefix


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`timestamp` as ISO 8601 UTC with microseconds (as structlog's TimeStamper(fmt="iso",
    utc=True) writes it), formatting the date and time once per second, not on every line.
    (The cache is one tuple, swapped whole: threads that log see either second, never a mix.)"""
    global _second
    now = time.time()
    sec = int(now)
    cached, prefix = _second
    if cached != sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second = (sec, prefix)
    event["timestamp"] = f"{prefix}.{int((now - sec) * 1_000_000):06d}Z"
    return event


def _log_default(value: Any) -> Any:
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if callable(structlog_form) else repr(value)


_log_json = json_encoder(sort_keys=False, default=_log_default)


def _render_json(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """One compact JSON object per line (what structlog's JSONRenderer writes, without the
    spaces, and with non-ASCII text as UTF-8), from an encoder built once."""
    return _log_json(event)


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
    processors: list[Any] = [structlog.processors.add_log_level, _timestamp, redact]
    if json_logs:
        processors += [structlog.processors.format_exc_info, _render_json]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),  # one write per line, no print()
        cache_logger_on_first_use=True,
    )
