"""What an operator reads in the log when something guard depends on fails: the cause and the
address, once, not twice a second with no detail."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from guard.errors import StoreUnavailable
from guard.log import Repeats, without_userinfo
from guard.stores import open_store
from tests.support.process import free_port


async def test_store_failed_names_the_cause_and_the_address_once() -> None:
    """A Redis that is down: every background loop fails; the log says why and where, once."""
    port = free_port()  # nothing listens here
    with capture_logs() as logs:
        store = await open_store(f"redis://guard:hunter2@127.0.0.1:{port}/0")
        try:
            for _ in range(20):
                with pytest.raises(StoreUnavailable):
                    await store.get_task("task_x")
        finally:
            await store.close()
    [unreachable] = [e for e in logs if e["event"] == "store_unreachable"]
    assert unreachable["store"] == f"redis://127.0.0.1:{port}/0"
    failed = [e for e in logs if e["event"] == "store_failed"]
    assert len(failed) == 1, failed  # not one per failure
    assert failed[0]["store"] == f"redis://127.0.0.1:{port}/0"
    assert failed[0]["detail"] and "refused" in failed[0]["detail"].lower()
    assert "hunter2" not in repr(logs)


def test_repeats_logs_the_first_then_one_every_period_with_the_count() -> None:
    r = Repeats(every_s=10)
    assert r.due("ConnectionError", now=100.0) == 0
    assert [r.due("ConnectionError", now=100.0 + i) for i in range(1, 10)] == [None] * 9
    assert r.due("TimeoutError", now=105.0) == 0  # another kind is news
    assert r.due("ConnectionError", now=110.5) == 9


def test_without_userinfo() -> None:
    assert without_userinfo("redis://u:p@h:6379/0") == "redis://h:6379/0"
    assert without_userinfo("redis+sentinel://:pw@s1:26379,s2:26379/main/0") == "redis+sentinel://s1:26379,s2:26379/main/0"
    assert without_userinfo("memory://") == "memory://"


def test_an_unreadable_trust_bundle_is_logged_when_an_svid_is_refused(tmp_path: Path) -> None:
    """A bundle that goes missing after the start: SVIDs are refused (fail closed), and the log says why."""
    from guard.config import X509IssuerCfg
    from guard.identity.binding import X509Issuers

    bundle = tmp_path / "bundle.pem"
    issuers = X509Issuers([X509IssuerCfg(trust_bundle_file=str(bundle), spiffe_id="spiffe://acme/agent/*")])
    with capture_logs() as logs:
        assert not issuers.admit("spiffe://acme/agent/researcher", b"root")
        assert not issuers.admit("spiffe://acme/agent/researcher", b"root")
    [event] = [e for e in logs if e["event"] == "trust_bundle_unreadable"]  # once, not per request
    assert event["file"] == str(bundle) and "No such file" in event["reason"]
