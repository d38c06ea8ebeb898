"""Where the Redis store's state lives: one Redis, a Redis Cluster, or a primary found through
Sentinel; and how the store's writes reach it (and its replicas, with `store.wait_replicas`).

    redis://host:port/db                         one Redis (rediss:// with TLS, unix:// a socket)
    redis+cluster://h1:p1,h2:p2/                 Redis Cluster: seed nodes, the topology is discovered
    redis+sentinel://s1:p1,s2:p2,s3:p3/NAME/DB   the primary NAME as Sentinel reports it, found again
                                                 after a failover

`user:password@` before the hosts authenticates to the Redis nodes (not to the sentinels);
`?socket_timeout=SECONDS` sets the store's deadline per operation (1 s).

One Redis and Sentinel send the commands of the calls over one shared connection (mux.py);
a new connection under Sentinel asks the sentinels where the primary is, so a failover costs
the calls in flight and those until a replica is promoted (503 store_unavailable), then the
next connection finds the new primary. Redis Cluster goes through redis-py's cluster client:
the commands of one round trip are grouped by node and each node's share is sent in order on
one connection (so a batch of one task's appends runs in order: every key of a task is in one
slot); MOVED and ASK are followed, and a connection error makes it read the topology again.
No command that may have run is sent again, on any topology.

With `wait_replicas: N`, writes are followed by `WAIT N timeout` on the connection (and, in a
cluster, the node) that made them (on the shared connection, the writes of one event-loop turn
share one WAIT), and fewer than N acknowledgements fail the operation closed (503): an answered
call's records, budget and consumed credentials are then on N replicas too, so they survive the
loss of their primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from guard.log import get_logger
from guard.stores.redis.mux import Multiplexer, address_of, closed_by_server
from guard.stores.redis.url import Topology, parse_topology

__all__ = [
    "ClusterSender", "ReplicasBehind", "SeedPubSub", "Sender", "SentinelPubSub", "Topology", "WaitingSender",
    "close_sentinels",
    "cluster_client", "parse_topology", "pubsub_client", "sentinel_client",
]

log = get_logger("guard.store")
Command = tuple[Any, ...]


class ReplicasBehind(RedisError):
    """WAIT answered fewer replicas than `store.wait_replicas`: the write may not survive a failover."""


class Sender(Protocol):
    """How the store's commands go out: the replies in order, an error reply in its place."""

    def send(self, commands: list[Command]) -> Awaitable[list[Any]]: ...

    async def reset(self) -> None: ...

    async def ping(self) -> None:
        """Readiness: every node the calls would write to answers, on the connections they use."""

    async def close(self) -> None: ...


def sentinel_client(topology: Topology, packing: type[aioredis.Connection], **kwargs: Any) -> aioredis.Redis:
    """The primary behind Sentinel: each new connection asks the sentinels where it is now."""
    sentinel = Sentinel(
        list(topology.nodes), socket_timeout=topology.op_timeout,
        sentinel_kwargs={"socket_timeout": topology.op_timeout, "socket_connect_timeout": 0.5})
    connection = type("HiredisSentinelConnection", (packing, SentinelManagedConnection), {})
    client: aioredis.Redis = sentinel.master_for(
        topology.master, connection_class=connection, db=topology.db, username=topology.username,
        password=topology.password, **kwargs)
    return client


async def close_sentinels(client: aioredis.Redis) -> None:
    """The connections to the sentinels of a client from sentinel_client (none for others)."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


class NodeConnection(aioredis.Connection):
    """A cluster node's connection, which waits in the node's free list between round trips:
    one the server closed meanwhile (a node restarted, failed over, or timed it out) is
    connected afresh before anything is written on it. Nothing had been sent on it, so this
    is safe; writing on it would lose the round trip (the closed end never runs it) and answer
    503 although the node is up."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.is_connected and await closed_by_server(self):
            address = address_of(self)
            await self.disconnect(nowait=True)
            await self.connect()  # type: ignore[no-untyped-call]
            log.info("store_reconnected", address=address, cause="closed while idle")
        await super().send_packed_command(command, check_health)


def cluster_client(topology: Topology, **kwargs: Any) -> RedisCluster:
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in topology.nodes], username=topology.username,
        password=topology.password, retry=Retry(NoBackoff(), 0),  # never re-send what may have run
        **kwargs)
    # redis-py takes no connection class for a cluster (it picks plain or TLS): set it on the
    # options every node is made from, and on the seed nodes made already
    if client.connection_kwargs["connection_class"] is aioredis.Connection:
        client.connection_kwargs["connection_class"] = NodeConnection
        for node in client.startup_nodes:
            node.connection_class = NodeConnection
    return client


def pubsub_client(url: str) -> Any:
    """A client for pub/sub on the store's topology: the Redis itself, the primary behind
    Sentinel (followed after a failover), or the cluster (a message published on one node
    reaches the subscribers of every node)."""
    topology = parse_topology(url)
    if topology.kind == "cluster":
        return SeedPubSub(topology)
    if topology.kind == "sentinel":
        sentinel = Sentinel(list(topology.nodes), socket_timeout=topology.op_timeout)
        return SentinelPubSub(sentinel.master_for(topology.master, db=topology.db, username=topology.username,
                                                  password=topology.password, socket_connect_timeout=2))
    return aioredis.Redis.from_url(url, socket_connect_timeout=2)


class SentinelPubSub:
    """Pub/sub on the primary behind Sentinel; closing it closes the connections to the sentinels too."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    def pubsub(self, **kwargs: Any) -> Any:
        return self._client.pubsub(**kwargs)

    async def publish(self, channel: str, message: str) -> int:
        return int(await self._client.publish(channel, message))

    async def aclose(self) -> None:
        await close_sentinels(self._client)
        await self._client.aclose()


class SeedPubSub:
    """Pub/sub on a Redis Cluster through its seed nodes, one at a time: a message published on
    any node reaches the subscribers of every node, so any live node will do. Each new
    subscription (after the last one broke) and each failed publish moves on to the next seed."""

    def __init__(self, topology: Topology) -> None:
        self._clients = [aioredis.Redis(host=h, port=p, username=topology.username, password=topology.password,
                                        socket_connect_timeout=2) for h, p in topology.nodes]
        self._sub = self._pub = 0

    def pubsub(self, **kwargs: Any) -> Any:
        client = self._clients[self._sub % len(self._clients)]
        self._sub += 1
        return client.pubsub(**kwargs)

    async def publish(self, channel: str, message: str) -> int:
        error: Exception = RedisConnectionError("no seed node")
        for _ in self._clients:
            try:
                return int(await self._clients[self._pub % len(self._clients)].publish(channel, message))
            except (RedisError, OSError) as e:
                error = e
                self._pub += 1
        raise error

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class WaitingSender:
    """The shared connection, its writes followed by WAIT (one Redis, or Sentinel's primary).
    The round trips queued during one turn of the event loop go out in one write (mux.py)
    and share one WAIT after them: it acknowledges every write before it on the connection."""

    def __init__(self, mux: Multiplexer, replicas: int, timeout_ms: int) -> None:
        self._mux, self._wait = mux, ("WAIT", replicas, timeout_ms)
        self._acked: asyncio.Future[list[Any]] | None = None  # the WAIT of this loop turn

    def send(self, commands: list[Command]) -> Awaitable[list[Any]]:
        replies = self._mux.send(commands)
        if self._acked is None:
            loop = asyncio.get_running_loop()
            self._acked = loop.create_future()
            self._acked.add_done_callback(_retrieved)  # its callers may all have given up
            loop.call_soon(self._send_wait)
        return self._after(replies, self._acked)

    def _send_wait(self) -> None:
        acked, self._acked = self._acked, None
        assert acked is not None
        self._mux.send([self._wait]).add_done_callback(lambda done: _settle(acked, done))

    async def _after(self, replies: Awaitable[list[Any]], acked: asyncio.Future[list[Any]]) -> list[Any]:
        out = await replies
        [reply] = await asyncio.shield(acked)  # shared by every round trip of the loop turn
        _check_acked(reply, self._wait[1])
        return out

    async def reset(self) -> None:
        await self._mux.reset()

    async def ping(self) -> None:
        await self._mux.ping()

    async def close(self) -> None:
        await self._mux.close()


def _retrieved(done: asyncio.Future[list[Any]]) -> None:
    if not done.cancelled():
        done.exception()


def _settle(acked: asyncio.Future[list[Any]], done: asyncio.Future[list[Any]]) -> None:
    if done.cancelled():
        acked.set_exception(RedisConnectionError("the connection was reset"))
    elif (error := done.exception()) is not None:
        acked.set_exception(error)
    else:
        acked.set_result(done.result())


def _check_acked(reply: Any, wanted: int) -> None:
    if isinstance(reply, Exception):
        raise reply
    if int(reply) < wanted:
        raise ReplicasBehind(f"{reply} of {wanted} replicas acknowledged the write in time")


def _first_key(command: Command) -> Any:
    if str(command[0]).upper() in ("EVAL", "EVALSHA"):
        return command[3] if int(command[2]) else None
    return command[1] if len(command) > 1 else None


class ClusterSender:
    """The commands of a round trip through a cluster pipeline: grouped by node, each node's
    share in order on one connection, then (with `replicas`) WAIT on each node written to."""

    def __init__(self, client: RedisCluster, deadline: float, replicas: int = 0, timeout_ms: int = 0) -> None:
        self._rc, self._deadline, self._replicas, self._timeout_ms = client, deadline, replicas, timeout_ms

    async def send(self, commands: list[Command]) -> list[Any]:
        """Bounded by the store's deadline itself: a batch of appends waits on it (chain.py)."""
        try:
            async with asyncio.timeout(self._deadline):
                return await self._send(commands)
        except TimeoutError:
            self._rc._initialize = True  # a node that hangs: read the topology again
            raise

    async def _send(self, commands: list[Command]) -> list[Any]:
        await self._rc.initialize()  # the slots of a topology read anew after an error
        pipe = self._rc.pipeline()
        for command in commands:
            pipe.execute_command(*command)
        nodes: dict[str, ClusterNode] = {}
        if self._replicas:
            for command in commands:
                key = _first_key(command)
                if key is not None:
                    node = self._rc.get_node_from_key(key)
                    if node is not None:
                        nodes[node.name] = node
            for node in nodes.values():
                pipe.execute_command("WAIT", self._replicas, self._timeout_ms, target_nodes=node)
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except (RedisConnectionError, RedisTimeoutError, OSError, RuntimeError) as e:
            # a node is gone (or its connection was closed under us): the next send reads the
            # topology again, as redis-py's own commands do after a connection error
            self._rc._initialize = True
            if isinstance(e, RedisError):
                raise
            raise RedisConnectionError(f"{type(e).__name__}: {e}") from e
        for acked in replies[len(commands):]:
            _check_acked(acked, self._replicas)
        return replies[:len(commands)]

    async def reset(self) -> None:
        """A node stopped answering: read the topology again before the next send."""
        self._rc._initialize = True

    async def ping(self) -> None:
        """Every primary of the topology (read again first, when an error asked for it) answers
        and says the cluster is ok: a call's task may live on any of them, and a node that has
        just restarted answers PING while it still refuses the commands on keys (CLUSTERDOWN)."""
        async with asyncio.timeout(self._deadline):
            await self._rc.initialize()
            try:
                info = await self._rc.execute_command("CLUSTER INFO", target_nodes=RedisCluster.PRIMARIES)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._rc._initialize = True  # a primary is gone: read the topology again
                raise
        for node, state in ({"": info} if "cluster_state" in info else info).items():
            if state.get("cluster_state") != "ok":
                raise ClusterDownError(f"{node} says cluster_state:{state.get('cluster_state')}")

    async def close(self) -> None:
        await self._rc.aclose()
