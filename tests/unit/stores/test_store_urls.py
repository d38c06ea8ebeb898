"""The store.url forms of Redis Cluster and Sentinel, and the errors a malformed one gives."""

from __future__ import annotations

import pytest

from guard.config import Config
from guard.stores.redis.url import parse_topology


def test_cluster_and_sentinel_urls_name_their_nodes() -> None:
    t = parse_topology("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/?socket_timeout=0.5")
    assert (t.kind, t.nodes, t.op_timeout) == ("cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), 0.5)
    s = parse_topology("redis+sentinel://u:p%40ss@s1:26379,s2:26379,[::1]:26380/guardmaster/3")
    assert (s.kind, s.master, s.db, s.username, s.password) == ("sentinel", "guardmaster", 3, "u", "p@ss")
    assert s.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380)) and s.op_timeout == 1.0
    assert parse_topology("redis+sentinel://s1:26379/m").db == 0
    assert parse_topology("redis://127.0.0.1:6379/0").kind == "single"


@pytest.mark.parametrize(("url", "says"), [
    ("redis+cluster://h1:7000/2", "no database number"),
    ("redis+cluster://h1/", "is not host:port"),
    ("redis+sentinel://:secret@s1:26379/", "MASTER_NAME/DB"),
    ("redis+sentinel://s1:26379/m/x", "MASTER_NAME/DB"),
    ("redis+cluster://h1:7000/?retries=3", "unknown option retries"),
])
def test_a_malformed_url_says_what_is_wrong_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as e:
        parse_topology(url)
    assert "secret" not in str(e.value)


def test_the_config_takes_the_new_forms_and_wait_replicas() -> None:
    cfg = Config.model_validate({"store": {"url": "redis+cluster://h1:7000/", "wait_replicas": 1}})
    assert cfg.store.wait_replicas == 1
    with pytest.raises(ValueError, match="wait_replicas"):
        Config.model_validate({"store": {"url": "redis+sentinel://s1:1/m/0", "wait_replicas": -1}})
    with pytest.raises(ValueError, match="MASTER_NAME/DB"):
        Config.model_validate({"store": {"url": "redis+sentinel://s1:1/"}})
