"""`guard serve`: build the app and run it (or supervise `--workers N` processes)."""

from __future__ import annotations

import argparse
import ctypes
import errno
import gc
import os
import socket
import sys
from typing import Any

from guard.config import Config, load_config

__all__ = ["add_commands", "cmd_serve", "handler_options", "limit_malloc_arenas", "listen"]


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before any thread starts (as MALLOC_ARENA_MAX does): the audit
    writer's and the resolver's threads otherwise each get an arena, and the process's memory keeps
    creeping up from fragmentation under long load. An explicit MALLOC_ARENA_MAX wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-8), ctypes.c_int(arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


async def tune_gc(_: object) -> None:
    """Once the guard has started (an aiohttp on_startup hook): what exists now (modules, policies,
    keys, the store) lives as long as the process, so full collections stop walking it
    (gc.freeze); and young collections run every 10,000 allocations instead of 700, since
    each call allocates a few hundred short-lived objects that reference counting frees anyway."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def cmd_serve(args: argparse.Namespace) -> int:
    from guard.app import build_app
    from guard.cli import serving
    from guard.cli.workers import check_workers, supervise
    from guard.log import configure_logging

    cfg = load_config(args.config)
    limit_malloc_arenas()
    configure_logging(json_logs=not args.console_logs)
    refused = check_workers(cfg, args.workers)
    if refused:
        raise cfg.error(("store", "url"), refused)
    if args.workers > 1:
        build_app(cfg)  # a bad policy stops here, once, not in every worker
        for sock in listen(cfg, reuse_port=True):  # so does a port in use
            sock.close()
        return supervise(args, args.workers)
    app = build_app(cfg)
    socks = listen(cfg, reuse_port=args.reuse_port)  # before the app starts: a port in use is one line
    app.on_startup.append(tune_gc)  # after the app's own startup (cleanup contexts run first)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from guard.identity.mtls import SERVER_TLS

    serving.run(
        app,
        socks,
        ssl_context=app[SERVER_TLS].base if SERVER_TLS in app else None,
        access_log=None,
        shutdown_timeout=5,
        **handler_options(cfg),
    )
    return 0


def listen(cfg: Config, reuse_port: bool = False) -> list[socket.socket]:
    """The bound sockets of `listen.host` and `listen.port`, or a config error saying why not."""
    from guard.cli.serving import bind

    host, port = cfg.listen.host, cfg.listen.port
    try:
        return bind(host, port, reuse_port)
    except socket.gaierror as e:
        raise cfg.error(("listen", "host"), f"{host}: cannot be resolved: {e.strerror}") from None
    except OSError as e:
        why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        key = "port" if e.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
        raise cfg.error(("listen", key), f"cannot listen on {host}:{port}: {why}") from None


def handler_options(cfg: Config) -> dict[str, Any]:
    """How aiohttp's request handler serves the guard (the in-process tests serve it the same way).
    keepalive_timeout also bounds how long a connection may take to send a request's headers:
    aiohttp closes a connection still waiting for a whole request. A handler is not cancelled when
    its client goes away: an approval hold sees the client gone and audits the refusal."""
    return {"keepalive_timeout": cfg.limits.read_timeout_s, "max_field_size": 8190, "max_line_size": 8190,
            "handler_cancellation": False}


def add_commands(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the guard")
    s.add_argument("--console-logs", action="store_true", help="human-readable logs instead of JSON")
    s.add_argument("--workers", type=int, default=1, help="processes on one port (SO_REUSEPORT; needs the Redis store)")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set in each worker
    s.set_defaults(func=cmd_serve)
