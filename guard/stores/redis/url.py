"""The `store.url` forms of the Redis store, parsed without importing a Redis client (the
config validates them at load time). See cluster.py for what each means."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Topology", "parse_topology"]

CLUSTER, SENTINEL = "redis+cluster", "redis+sentinel"


@dataclass(frozen=True)
class Topology:
    kind: str  # "single", "cluster" or "sentinel"
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def op_timeout(self) -> float:
        return float(self.options.get("socket_timeout", "1.0"))


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"store.url {_redact(url)}: {item!r} is not host:port")
    return host.strip("[]"), int(port)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def parse_topology(url: str) -> Topology:
    """The topology a `store.url` names; ValueError (without the password) when it is malformed."""
    scheme = url.partition("://")[0]
    if scheme not in (CLUSTER, SENTINEL):
        return Topology("single")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = tuple(_host_port(h, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"store.url {_redact(url)}: no host:port given")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"socket_timeout"}
    if unknown:
        raise ValueError(f"store.url {_redact(url)}: unknown option {', '.join(sorted(unknown))}")
    path = [p for p in parts.path.split("/") if p]
    username, secret = unquote(user) or None, unquote(password) or None
    if scheme == CLUSTER:
        if path:
            raise ValueError(f"store.url {_redact(url)}: a cluster has no database number (only db 0)")
        return Topology("cluster", nodes, username=username, password=secret, options=options)
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"store.url {_redact(url)}: expected redis+sentinel://host:port,…/MASTER_NAME/DB")
    return Topology("sentinel", nodes, path[0], int(path[1]) if len(path) == 2 else 0, username, secret, options)
