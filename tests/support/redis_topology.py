"""Real Redis topologies for the tests: a 6-node Redis Cluster (3 primaries, 3 replicas) and a
primary with 2 replicas watched by 3 sentinels. Every process runs on a free loopback port in a
folder of its own under the given temp dir, and is stopped by PID.

    with ClusterTopology(tmp_path).start() as cluster:
        url = cluster.url                     # redis+cluster://127.0.0.1:p1,127.0.0.1:p2/
        node = cluster.primary_of(task_key("task_1", "task"))   # guard.stores.redis.keys
        node.kill()                           # a replica takes over within a few seconds
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.process import Proc, free_port, spawn, wait_port

__all__ = ["ClusterTopology", "RedisNode", "SentinelTopology", "topology_missing_reason"]

MASTER = "guardmaster"


def topology_missing_reason() -> str | None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    return None


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout,
                         check=False)
    return out.stdout.strip()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class RedisNode:
    """One redis-server (or sentinel) process: its port, folder and arguments, restartable."""

    def __init__(self, root: Path, name: str, args: list[str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.args = name, args
        self.proc: Proc | None = None

    def start(self) -> RedisNode:
        args = [a.replace("{port}", str(self.port)).replace("{dir}", str(self.dir)) for a in self.args]
        self.proc = spawn(args, self.dir, f"{self.name}.log")
        wait_port(self.port, proc=self.proc.popen)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def cli(self, *args: str) -> str:
        return cli(self.port, *args)


def _server(root: Path, name: str, *extra: str, port: int | None = None) -> RedisNode:
    return RedisNode(root, name, ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--dir", "{dir}",
                                  "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                  "--daemonize", "no", *extra], port)


class _Topology:
    nodes: list[RedisNode]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


class ClusterTopology(_Topology):
    """Six nodes, `redis-cli --cluster create … --cluster-replicas 1`: 3 primaries, 3 replicas.
    A node is failed over after `cluster-node-timeout` (1 s) without answering."""

    def __init__(self, root: Path, node_timeout_ms: int = 1000) -> None:
        self.nodes = [_server(root, f"cluster-{i}", "--cluster-enabled", "yes", "--cluster-config-file",
                              "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms), port=free_cluster_port())
                      for i in range(6)]

    def start(self) -> ClusterTopology:
        for node in self.nodes:
            node.start()
        out = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                              "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True,
                             timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.wait_ok()
        self.wait_replicated()
        return self

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port},127.0.0.1:{self.nodes[1].port}/"

    def alive(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.alive]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Every live node says the cluster is ok and has 3 primaries serving every slot."""
        def ok() -> bool:
            return all("cluster_state:ok" in n.cli("cluster", "info") for n in self.alive()) and len(
                self.primaries()) == 3
        wait_until(ok, "cluster_state:ok", timeout)

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Every primary has a replica online (WAIT 1 can succeed)."""
        wait_until(lambda: all("state=online" in n.cli("info", "replication") for n in self.primaries()),
                   "every primary's replica to sync", timeout)

    def primaries(self) -> list[RedisNode]:
        """The live nodes that are primaries with slots, as a live node sees it."""
        by_port = {n.port: n for n in self.nodes}
        seen = self.alive()[0].cli("cluster", "nodes").splitlines()
        out = []
        for line in seen:
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            if "master" in parts[2] and "fail" not in parts[2] and len(parts) > 8 and by_port[port].alive:
                out.append(by_port[port])
        return out

    def primary_of(self, key: str) -> RedisNode:
        """The primary serving the slot of `key`, as a live node sees it."""
        return self._node_of_slot(int(self.alive()[0].cli("cluster", "keyslot", key)))

    def _node_of_slot(self, slot: int) -> RedisNode:
        by_port = {n.port: n for n in self.nodes}
        for line in self.alive()[0].cli("cluster", "nodes").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for span in parts[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return by_port[int(parts[1].split("@")[0].rsplit(":", 1)[1])]
        raise LookupError(f"no primary serves slot {slot}")

    def flush(self) -> None:
        for node in self.primaries():
            node.cli("flushall")

    def keyslot(self, key: str) -> int:
        return int(self.alive()[0].cli("cluster", "keyslot", key))

    def move_slot(self, slot: int, to: RedisNode) -> None:
        """Migrate one slot and its keys to the primary `to` (CLUSTER SETSLOT IMPORTING/MIGRATING,
        MIGRATE, then SETSLOT NODE on every primary), as a resharding does."""
        source = self._node_of_slot(slot)
        src_id, dst_id = source.cli("cluster", "myid"), to.cli("cluster", "myid")
        to.cli("cluster", "setslot", str(slot), "importing", src_id)
        source.cli("cluster", "setslot", str(slot), "migrating", dst_id)
        while keys := source.cli("cluster", "getkeysinslot", str(slot), "100").split():
            source.cli("migrate", "127.0.0.1", str(to.port), "", "0", "5000", "keys", *keys)
        for node in self.primaries():
            node.cli("cluster", "setslot", str(slot), "node", dst_id)
        wait_until(lambda: all(self._node_of_slot_seen_by(n, slot) is to for n in self.alive()),
                   f"every node to see slot {slot} on its new primary")

    def _node_of_slot_seen_by(self, viewer: RedisNode, slot: int) -> RedisNode | None:
        by_port = {n.port: n for n in self.nodes}
        for line in viewer.cli("cluster", "nodes").splitlines():
            parts = line.split()
            for span in parts[8:]:
                lo, _, hi = span.partition("-")
                if "master" in parts[2] and lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return by_port[int(parts[1].split("@")[0].rsplit(":", 1)[1])]
        return None


class SentinelTopology(_Topology):
    """A primary, two replicas of it, and three sentinels (quorum 2) that promote a replica
    after the primary stops answering for 1 s."""

    def __init__(self, root: Path, down_after_ms: int = 1000) -> None:
        self.servers = [_server(root, "primary")]
        self.servers += [_server(root, f"replica-{i}", "--replicaof", "127.0.0.1", str(self.servers[0].port))
                         for i in range(2)]
        self.sentinels = []
        for i in range(3):
            node = RedisNode(root, f"sentinel-{i}", [])
            conf = node.dir / "sentinel.conf"
            conf.write_text(f"port {node.port}\nbind 127.0.0.1\ndir {node.dir}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {self.servers[0].port} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
                            f"sentinel failover-timeout {MASTER} 10000\n"
                            f"sentinel parallel-syncs {MASTER} 2\n")
            node.args = ["redis-server", str(conf), "--sentinel"]
            self.sentinels.append(node)
        self.nodes = [*self.servers, *self.sentinels]

    def start(self) -> SentinelTopology:
        for node in self.nodes:
            node.start()
        wait_until(lambda: all(s.cli("sentinel", "replicas", MASTER).count("127.0.0.1") >= 2
                               and s.cli("sentinel", "sentinels", MASTER).count("127.0.0.1") >= 2
                               for s in self.sentinels), "the sentinels to see both replicas and each other")
        wait_until(lambda: "master_link_status:up" in self.servers[1].cli("info", "replication")
                   and "master_link_status:up" in self.servers[2].cli("info", "replication"), "the replicas to sync")
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def primary(self) -> RedisNode:
        """The server the sentinels name as primary now."""
        for s in self.sentinels:
            if not s.alive:
                continue
            addr = s.cli("sentinel", "get-master-addr-by-name", MASTER).split()
            if len(addr) == 2:
                return next(n for n in self.servers if n.port == int(addr[1]))
        raise LookupError("no sentinel names a primary")

    def wait_promoted(self, old: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Wait until the sentinels name another primary than `old`, and it accepts writes."""
        def promoted() -> bool:
            now = self.primary()
            return now is not old and "role:master" in now.cli("info", "replication")
        wait_until(promoted, "a replica to be promoted", timeout)
        return self.primary()

    def flush(self) -> None:
        self.primary().cli("flushall")
