"""structlog configuration: JSON lines (or console in development), with redaction."""

from __future__ import annotations

import asyncio
import atexit
import errno
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import MutableMapping
from contextvars import Context, ContextVar, copy_context
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from guard.canonical import json_encoder

__all__ = ["LineWriter", "Logger", "ProtocolErrorFilter", "Repeats", "bind_request", "configure_logging", "get_logger",
           "merge_request", "network_cause", "redact", "unbound", "without_userinfo"]

_SECRET_KEYS = frozenset(
    {"token", "task_token", "authorization", "secret", "password", "credential", "txn_token",
     "cookie", "args", "arguments", "body", "api_key", "signature"}
)


_second: tuple[int, str] = (-1, "")  # the last whole second stamped, and its ISO 8601 prefix


_request: ContextVar[dict[str, Any] | None] = ContextVar("guard_request_log_fields", default=None)


class Logger:
    """A module's logger: `structlog.get_logger(name)`, its logging methods kept once found.

    structlog's lazy proxy finds the method on every line through `__getattr__`, after the
    ordinary lookup has failed and raised: 6,400 instructions a line, a filtered debug line
    included. When structlog caches loggers on first use (as `configure_logging` has it), the
    proxy answers with the same method every time after the first, so each method is kept here
    once found; otherwise (a test that captures logs) it is looked up on every line, as before."""

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):  # (before __init__ ran, say: never the proxy's own)
            raise AttributeError(method)
        found = getattr(self._proxy, method)
        if structlog.get_config()["cache_logger_on_first_use"]:
            setattr(self, method, found)
        return found


def get_logger(name: str) -> Any:
    """The logger of the module `name` (see Logger)."""
    return Logger(name)


def bind_request(task_id: str, call_id: str) -> None:
    """Bind a request's log fields once, when its caller is known: every line logged while the
    request is handled (and by the tasks it starts, but those started in an `unbound()` context)
    then carries `task_id` and `call_id`.
    aiohttp handles each request in a task of its own, whose context is its own copy, so the
    fields never reach another request. (One context variable and `merge_request`, rather than
    structlog's `bind_contextvars` and `merge_contextvars`: that processor walks every context
    variable of the task on every line, about 1 % of an allowed call's instructions.)"""
    _request.set({"task_id": task_id, "call_id": call_id})


def unbound() -> Context:
    """A copy of this context without the request's log fields, for a task that a request starts
    but that serves others and outlives it (the shared Redis connection's writer and reader, the
    secrets manager's login and renewals): its lines name no task or call of one request."""
    context = copy_context()
    context.run(_request.set, None)
    return context


def merge_request(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The request's bound fields (`bind_request`), where the line does not name them itself."""
    fields = _request.get()
    if fields is not None:
        for key, value in fields.items():
            event.setdefault(key, value)
    return event


def _stamp(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`level` (as structlog's add_log_level names it) and `timestamp` as ISO 8601 UTC with
    microseconds (as structlog's TimeStamper(fmt="iso", utc=True) writes it), formatting the
    date and time once per second, not on every line. (The cache is one tuple, swapped whole:
    threads that log see either second, never a mix.)"""
    global _second
    event["level"] = "warning" if method == "warn" else "error" if method == "exception" else method
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


def _render_json(logger: Any, method: str, event: MutableMapping[str, Any]) -> bytes | str:
    """One compact JSON object per line (what structlog's JSONRenderer writes, without the
    spaces, and with non-ASCII text as UTF-8), from an encoder built once; an exception's
    traceback as structlog's format_exc_info writes it. Bytes for a LineWriter, text for a
    stream a test captures."""
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(logger, method, event)
    line = _log_json(event)
    return line if type(logger) is LineWriter else line.decode()


_plain: set[str] = set()  # field names seen before whose values are kept


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop tokens, secrets and raw arguments (any case of the names): logs carry digests and ids
    only. (Field names come from the code, a bounded set: each is looked at once, and a line
    whose names are all known plain passes with one set comparison.)"""
    if _plain.issuperset(event):
        return event
    for key in event:
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif len(_plain) < 4096:
            _plain.add(key)
    return event


def without_userinfo(url: str) -> str:
    """A URL fit for a log line: `redis://user:pw@host:6379/0` is `redis://host:6379/0`."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2]


_ERRNO_WORDS = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "no route to the host",
                errno.ENETUNREACH: "the network is unreachable", errno.ECONNRESET: "connection reset",
                errno.ETIMEDOUT: "timed out"}


def network_cause(e: BaseException) -> str:
    """Why a service could not be reached, in the words an operator acts on: connection refused,
    the name does not resolve (DNS), timed out, ... (the exception and its causes are looked at)."""
    seen: BaseException | None = e
    for _ in range(6):
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return f"the name does not resolve (DNS: {seen.strerror})"
        if isinstance(seen, TimeoutError):
            return "timed out"
        code = getattr(seen, "errno", None)
        if code in _ERRNO_WORDS:
            return _ERRNO_WORDS[code]
        os_error = getattr(seen, "os_error", None)  # aiohttp's ClientConnectorError
        if isinstance(os_error, OSError) and os_error is not seen:
            seen = os_error
        else:
            seen = seen.__cause__ or seen.__context__
    m = re.match(r"Error (-?\d+) ", str(e))  # redis-py: "Error 111 connecting to host:port. ..."
    if m and int(m.group(1)) in _ERRNO_WORDS:
        return _ERRNO_WORDS[int(m.group(1))]
    if m and int(m.group(1)) in (socket.EAI_NONAME, socket.EAI_AGAIN, -2, -3):
        return "the name does not resolve (DNS)"
    return str(e)[:200] or type(e).__name__


class Repeats:
    """How often to log a failure that repeats (a store that is down fails every background loop,
    several times a second): the first of a kind at once, then at most one every `every_s` with the
    number left out since (`repeated`)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}  # kind: (when last logged, left out since)

    def due(self, kind: str, now: float | None = None) -> int | None:
        """None: leave this one out; else log it, with the number left out before it."""
        now = time.monotonic() if now is None else now
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.every_s:
            self._last[kind] = (last[0], last[1] + 1)
            return None
        self._last[kind] = (now, 0)
        return last[1] if last is not None else 0


class LineWriter:
    """structlog's logger: JSON lines to a file descriptor. Lines logged on the event loop are
    written together once per turn of the loop (a busy guard logs a line per call: one write per
    turn instead of one per line); lines from anywhere else are written at once. Each write holds
    whole lines and at most PIPE_BUF bytes when it can, so lines of several workers sharing one
    pipe never interleave mid-line."""

    CHUNK = 4096  # PIPE_BUF on Linux: a write this small to a pipe is atomic

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose lines are gathered
        self._lines: list[bytes] = []

    def msg(self, message: bytes | str) -> None:
        line = message + b"\n" if isinstance(message, bytes) else f"{message}\n".encode()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (loop is not self._loop and self._loop is not None and self._loop.is_running()):
            self._write([line])  # off the loop (a thread, the CLI): at once
            return
        if loop is not self._loop:
            self.flush()  # what a loop that has stopped left behind
            self._loop = loop
        if not self._lines:
            loop.call_soon(self.flush)
        self._lines.append(line)

    debug = info = warning = warn = error = err = critical = exception = fatal = failure = log = msg

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > self.CHUNK:
                self._write_all(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_all(b"".join(chunk))

    def _write_all(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            pass  # a closed or full log stream must not fail the call that logs


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


_writers: dict[int, LineWriter] = {}


def _writer_for(stream: Any) -> Any:
    """The stream's LineWriter (one per descriptor); structlog's own WriteLogger for a stream
    that has no descriptor (captured by a test, say)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return structlog.WriteLogger(stream)
    stream.flush()
    if fd not in _writers:
        _writers[fd] = LineWriter(fd)
    return _writers[fd]


@atexit.register
def _flush_writers() -> None:
    for writer in _writers.values():
        writer.flush()


def configure_logging(json_logs: bool = True, level: str = "INFO") -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolErrorFilter) for f in server_log.filters):
        server_log.addFilter(ProtocolErrorFilter())
    processors: list[Any] = [merge_request, _stamp, redact]
    if json_logs:
        processors.append(_render_json)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    writer = _writer_for(sys.stderr)  # the stream of now (as structlog's WriteLoggerFactory(sys.stderr))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
