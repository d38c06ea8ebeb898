"""What the guard's log lines look like to whoever ships them: one JSON object per line."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog

from guard.log import LineWriter, bind_request, configure_logging, get_logger, unbound

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging(json_logs=True)
    yield buf
    structlog.reset_defaults()


def test_a_decision_is_one_compact_json_line_with_an_iso_utc_timestamp(stderr: io.StringIO) -> None:
    before = datetime.now(UTC)
    structlog.get_logger("guard.test").info("call_decided", task_id="task_1", call_id="call_1",
                                            purpose="résumé\x1b[2J", token="eyJ.secret.sig")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert ", " not in line and '": ' not in line  # compact
    assert "résumé" in line and "\\u001b" in line and "\x1b" not in line  # UTF-8 kept, control escaped
    rec = json.loads(line)
    assert (rec["event"], rec["level"], rec["task_id"], rec["call_id"]) == ("call_decided", "info", "task_1", "call_1")
    assert rec["token"] == "[redacted]" and "eyJ.secret.sig" not in line
    assert ISO_UTC.match(rec["timestamp"]), rec["timestamp"]
    stamped = datetime.strptime(rec["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((stamped - before).total_seconds()) < 5


def test_secrets_are_redacted_whatever_the_lines_before_them_held(stderr: io.StringIO) -> None:
    log = structlog.get_logger("guard.test")
    log.info("call_decided", task_id="task_1", call_id="call_1")  # every name plain
    log.info("call_decided", task_id="task_1", call_id="call_1", Task_Token="eyJ.a.b")
    log.info("call_decided", task_id="task_1", call_id="call_1", Task_Token="eyJ.c.d")
    log.info("call_decided", task_id="task_1", API_KEY="k-1")
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [r.get("Task_Token") for r in lines] == [None, "[redacted]", "[redacted]", None]
    assert lines[3]["API_KEY"] == "[redacted]" and lines[3]["task_id"] == "task_1"
    assert "eyJ" not in stderr.getvalue() and "k-1" not in stderr.getvalue()


async def test_a_requests_fields_are_bound_once_and_stay_with_its_own_lines(stderr: io.StringIO) -> None:
    """Each request runs in a task of its own (as aiohttp runs them): the fields one binds reach
    every line it logs, a line's own value wins, and nothing reaches a concurrent request or the
    code outside."""
    log = structlog.get_logger("guard.test")
    both_bound = asyncio.Event()
    bound = 0

    async def request(task_id: str, call_id: str) -> None:
        nonlocal bound
        log.info("before_bound")
        bind_request(task_id, call_id)
        bound += 1
        if bound == 2:
            both_bound.set()
        await both_bound.wait()  # the other request has bound its own meanwhile
        log.info("call_decided", effect="allow")
        log.info("lease_taken", call_id="call_shared")

    await asyncio.gather(asyncio.create_task(request("task_a", "call_a")),
                         asyncio.create_task(request("task_b", "call_b")))
    log.info("outside")
    await asyncio.sleep(0)  # lines logged on the loop are written at the end of its turn
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    seen = [(r["event"], r.get("task_id"), r.get("call_id")) for r in lines]
    assert sorted(seen) == sorted([
        ("before_bound", None, None), ("before_bound", None, None),
        ("call_decided", "task_a", "call_a"), ("call_decided", "task_b", "call_b"),
        ("lease_taken", "task_a", "call_shared"), ("lease_taken", "task_b", "call_shared"),
        ("outside", None, None),
    ])


async def test_a_task_started_unbound_logs_no_fields_of_the_request_that_started_it(stderr: io.StringIO) -> None:
    """Work a request starts for every caller (a shared connection, guard's own login) runs in an
    `unbound()` context: its lines name no task or call, while the request's own lines still do."""
    log = structlog.get_logger("guard.test")

    async def shared_work() -> None:
        log.info("store_reconnected")

    async def request() -> None:
        bind_request("task_a", "call_a")
        await asyncio.get_running_loop().create_task(shared_work(), context=unbound())
        log.info("call_decided")

    await asyncio.create_task(request())
    await asyncio.sleep(0)  # lines logged on the loop are written at the end of its turn
    seen = [(r["event"], r.get("task_id"), r.get("call_id")) for r in map(json.loads, stderr.getvalue().splitlines())]
    assert seen == [("store_reconnected", None, None), ("call_decided", "task_a", "call_a")]


def test_values_json_cannot_encode_are_logged_as_their_repr(stderr: io.StringIO) -> None:
    structlog.get_logger("guard.test").warning("odd", value={1, 2}.__class__)
    rec = json.loads(stderr.getvalue())
    assert rec["value"] == "<class 'set'>"


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


async def test_lines_logged_in_one_turn_of_the_loop_come_out_together_whole_and_in_order() -> None:
    r, w = os.pipe()
    try:
        writer = LineWriter(w)
        for i in range(3):
            writer.info(json.dumps({"event": "call_decided", "n": i}))
        assert _read_all(r) == b""  # gathered until the loop comes round
        await asyncio.sleep(0)
        lines = _read_all(r).decode().splitlines()
        assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]
        await asyncio.to_thread(writer.info, '{"event":"from_a_thread"}')  # off the loop: at once
        assert _read_all(r) == b'{"event":"from_a_thread"}\n'
    finally:
        os.close(r)
        os.close(w)


def test_off_the_loop_a_line_is_written_at_once() -> None:
    r, w = os.pipe()
    try:
        LineWriter(w).warning('{"event":"cli"}')
        assert _read_all(r) == b'{"event":"cli"}\n'
    finally:
        os.close(r)
        os.close(w)


def test_a_modules_logger_writes_as_structlogs_and_keeps_its_methods_when_loggers_are_cached(
        stderr: io.StringIO) -> None:
    """guard.log.get_logger: the same lines as structlog.get_logger; with loggers cached on first
    use (configure_logging) a method is found once, without caching on every line."""
    log = get_logger("guard.test")
    log.info("call_decided", effect="allow")
    log.debug("filtered_out")
    assert "info" in vars(log) and "debug" in vars(log)
    log.info("call_decided", effect="deny")
    assert [json.loads(line)["effect"] for line in stderr.getvalue().splitlines()] == ["allow", "deny"]
    structlog.configure(cache_logger_on_first_use=False)
    fresh = get_logger("guard.test")
    with structlog.testing.capture_logs() as events:
        fresh.info("captured")
    assert events == [{"event": "captured", "log_level": "info"}] and "info" not in vars(fresh)
