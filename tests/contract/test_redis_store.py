"""What only the Redis store has to get right: state it keeps in the process must not outlive
what Redis lost."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from guard.domain import Delivery, Task
from guard.errors import StoreUnavailable
from guard.hashchain import verify_chain
from guard.identity.tokens import new_id
from guard.stores import open_store
from guard.stores.redis.mux import Multiplexer
from guard.stores.redis.store import RedisStore
from tests.support.redis import RedisServer

pytestmark = pytest.mark.redis


async def test_an_agent_is_listed_again_after_redis_lost_its_data(redis_server: RedisServer) -> None:
    store = await open_store(redis_server.url)
    try:
        await store.record_agent_event("spiffe://a/listed", "task_created", 10.0)
        await store.record_agent_event("spiffe://a/listed", "call_denied", 11.0)  # listed once, not again
        assert set(await store.agent_stats()) == {"spiffe://a/listed"}

        redis_server.kill()  # a Redis that comes back empty: its append-only file is gone
        for aof in redis_server.dir.rglob("appendonly*"):
            if aof.is_file():
                aof.unlink()
        redis_server.start()

        # the old connection is dead: the first command after the restart reconnects first
        await store.record_agent_event("spiffe://a/listed", "call_denied", 12.0)
        stats = await store.agent_stats()
        assert set(stats) == {"spiffe://a/listed"}
        assert (stats["spiffe://a/listed"].denied, stats["spiffe://a/listed"].first_seen) == (1, 12.0)
    finally:
        await store.close()


async def test_concurrent_callers_each_get_their_own_replies(redis_server: RedisServer) -> None:
    """The calls of a process share one connection: replies are handed out in the order the
    commands went out, also when some callers gave up and an error reply comes in between."""
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    mux = Multiplexer(r.connection_pool.make_connection)
    try:
        await r.set("a-string", "x")
        futures = [mux.send([("ECHO", f"first {i}"), ("INCR", "a-string"), ("ECHO", f"last {i}")])
                   for i in range(200)]
        for f in futures[::3]:
            f.cancel()  # a caller whose deadline passed, or whose client went away
        for i, f in enumerate(futures):
            if i % 3:
                first, error, last = await f
                assert (first, last) == (f"first {i}", f"last {i}")
                assert isinstance(error, ResponseError) and "not an integer" in str(error)
        assert await mux.send([("ECHO", "after")]) == ["after"]
    finally:
        await mux.close()
        await r.aclose()


async def test_a_restarted_redis_fails_the_callers_waiting_and_serves_the_next(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    mux = Multiplexer(r.connection_pool.make_connection)
    try:
        assert await mux.send([("PING",)]) == ["PONG"]
        redis_server.send_signal(signal.SIGSTOP)  # answers nothing, connection open
        waiting = mux.send([("ECHO", "lost")])
        await asyncio.sleep(0.2)
        redis_server.kill()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(waiting, 10)
        redis_server.start()
        assert await mux.send([("ECHO", "back")]) == ["back"]  # a new connection, made by itself
    finally:
        await mux.close()
        await r.aclose()


async def test_a_hung_redis_fails_closed_within_the_deadline_and_is_used_again(redis_server: RedisServer) -> None:
    store = await open_store(f"{redis_server.url}?socket_timeout=0.3")
    now = time.time()
    task = Task(new_id("task"), "spiffe://a/hung", "hung redis", None, "active", now, now + 600)
    try:
        await store.create_task(task)
        redis_server.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable):  # the store's deadline, not wait_for's (a hang fails)
                await asyncio.wait_for(store.append_audit(task.task_id, {"event": "x", "task_id": task.task_id}), 10)
        finally:
            redis_server.send_signal(signal.SIGCONT)
        record = await store.append_audit(task.task_id, {"event": "y", "task_id": task.task_id})
        trail = await store.read_audit(task.task_id)
        # the command sent before the stop may have run when Redis resumed: then y follows it
        assert [r.fields["event"] for r in trail] == (["x", "y"] if record.seq == 2 else ["y"])
        assert verify_chain(r.fields for r in trail).verified
    finally:
        await store.close()


async def test_a_caller_cancelled_before_the_deadline_is_cancelled_not_failed(redis_server: RedisServer) -> None:
    """The deadline turns only its own cancellation into StoreUnavailable: a caller cancelled
    from outside (its client went away) while Redis hangs is cancelled, and the deadline it had
    armed does not fire into a later operation of the same task."""
    store = await open_store(f"{redis_server.url}?socket_timeout=0.5")
    now = time.time()
    task = Task(new_id("task"), "spiffe://a/cancelled", "cancelled caller", None, "active", now, now + 600)
    try:
        await store.create_task(task)

        async def two_appends() -> str:
            try:
                await store.append_audit(task.task_id, {"event": "x", "task_id": task.task_id})
            except asyncio.CancelledError:
                await asyncio.sleep(1.0)  # past the first deadline: it must not cancel this
                return "cancelled"
            return "appended"

        redis_server.send_signal(signal.SIGSTOP)
        try:
            caller = asyncio.ensure_future(two_appends())
            await asyncio.sleep(0.1)
            caller.cancel()
            assert await caller == "cancelled"
        finally:
            redis_server.send_signal(signal.SIGCONT)
    finally:
        await store.close()


async def test_with_wait_replicas_a_write_no_replica_acknowledges_fails_closed(redis_server: RedisServer) -> None:
    """`store.wait_replicas: 1` on a Redis without replicas: every write answers StoreUnavailable
    (it may have been applied on the primary, but the guard does not count it as done); reads work."""
    store = await open_store(redis_server.url, wait_replicas=1)
    now = time.time()
    task = Task(new_id("task"), "spiffe://a/waiting", "no replica", None, "active", now, now + 600)
    try:
        with pytest.raises(StoreUnavailable):
            await store.create_task(task)
        with pytest.raises(StoreUnavailable):
            await store.append_audit(task.task_id, {"event": "x", "task_id": task.task_id})
        with pytest.raises(StoreUnavailable):
            await store.consume_credential("jti-1", now + 30)
        state = await store.get_task(task.task_id)  # applied on the primary: reads see it
        assert state is not None and state.task == task
    finally:
        await store.close()


async def test_a_redis_that_lost_its_scripts_still_runs_every_operation(redis_server: RedisServer) -> None:
    """SCRIPT FLUSH (or a restarted Redis): the next calls get NOSCRIPT, nothing ran, and each is
    answered by sending the script's source; batched appends of one task among them."""
    store = await open_store(redis_server.url)
    r = redis.Redis.from_url(redis_server.url)
    now = time.time()
    task = Task(new_id("task"), "spiffe://a/flushed", "lost scripts", None, "active", now, now + 600)
    try:
        await store.create_task(task)
        await store.append_audit(task.task_id, {"event": "before", "task_id": task.task_id})
        await r.script_flush()
        drafts = [{"event": f"after-{i}", "task_id": task.task_id} for i in range(20)]
        await asyncio.gather(*(store.append_audit(task.task_id, d) for d in drafts))
        ended = await store.end_task(task.task_id, "completed", time.time(), None)
        assert ended is not None and ended.status == "completed"
        trail = [rec.fields for rec in await store.read_audit(task.task_id)]
        assert len(trail) == 21 and verify_chain(trail).verified
    finally:
        await r.aclose()
        await store.close()


async def test_a_lost_round_trip_is_sent_again_only_when_it_may_run_twice(redis_server: RedisServer) -> None:
    """Redis closes the shared connection right after a command queued just before the store's
    (CLIENT KILL of itself), so the store's command never runs, but the guard cannot know that.
    Claiming deliveries may run twice: it is sent again on a fresh connection and answers.
    Consuming a credential id may not: it fails closed, and it had not run."""
    store = RedisStore(redis_server.url)
    now = time.time()
    delivery = Delivery(new_id("dlv"), new_id("apr"), new_id("task"), "spiffe://a/lost", "finance", "{}", now + 600)

    def kill_the_shared_connection(connection_id: int) -> asyncio.Future[list[Any]]:
        """Queued now: it goes out in the same write as the next command of the store."""
        killed = asyncio.ensure_future(store._sender.send([("CLIENT", "KILL", "ID", connection_id, "SKIPME", "no")]))
        killed.add_done_callback(lambda f: f.exception())
        return killed

    try:
        await store.save_delivery(delivery)
        [connection_id] = await store._send([("CLIENT", "ID")])
        kill_the_shared_connection(connection_id)
        claimed = await store.claim_deliveries("instance-a", now, now + 30)
        assert [d.delivery_id for d in claimed] == [delivery.delivery_id]

        [connection_id] = await store._send([("CLIENT", "ID")])
        kill_the_shared_connection(connection_id)
        with pytest.raises(StoreUnavailable):
            await store.consume_credential("jti-lost", now + 30)
        assert await store.consume_credential("jti-lost", now + 30)  # it had not run: still unused
    finally:
        await store.close()
