"""Routing tenants to writer shards, and the settings that name shards and brokers (no services)."""

from __future__ import annotations

from collections import Counter

import pytest

from jobplatform.broker import Queues
from jobplatform.errors import ConfigError
from jobplatform.settings import load_settings
from jobplatform.shards import ShardMap, ShardSpec, jump_hash, parse_shard_map


def test_jump_hash_is_stable_across_processes_and_versions() -> None:
    # Fixed values (blake2b of the id, not Python's hash()): a change here re-routes live
    # tenants, which needs a resharding
    assert [jump_hash(t, 2) for t in (1, 2, 3, 7, 1000)] == [0, 1, 1, 1, 0]
    assert [jump_hash(t, 4) for t in range(1, 11)] == [3, 3, 2, 3, 0, 1, 1, 3, 2, 0]
    assert all(jump_hash(t, 1) == 0 for t in range(100))


def test_jump_hash_spreads_tenants_and_moves_few_when_a_shard_is_added() -> None:
    tenants = range(1, 20_001)
    for count in (2, 3, 4):
        shares = Counter(jump_hash(t, count) for t in tenants)
        assert set(shares) == set(range(count))
        assert max(shares.values()) < 1.1 * len(tenants) / count
    # Growing 3 -> 4 moves only the tenants that land in the new shard (about a quarter)
    moved = [t for t in tenants if jump_hash(t, 3) != jump_hash(t, 4)]
    assert all(jump_hash(t, 4) == 3 for t in moved)
    assert 0.2 < len(moved) / len(tenants) < 0.3


def test_the_table_pins_tenants_and_the_rest_go_by_hash() -> None:
    routing = ShardMap(3, parse_shard_map(" 7=2, 12=0 ,"))
    assert routing.shard_of(7) == 2
    assert routing.shard_of(12) == 0
    assert routing.shard_of(13) == jump_hash(13, 3)
    with pytest.raises(ConfigError, match="tenant 7 -> shard 3"):
        ShardMap(3, {7: 3})
    with pytest.raises(ConfigError, match="TENANT=SHARD"):
        parse_shard_map("7:2")


def test_shard_specs_name_lanes_and_lock_keys() -> None:
    assert ShardSpec.parse("1/4") == ShardSpec(1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError):
            ShardSpec.parse(bad)
    assert ShardSpec().lock_key(100) == 100
    assert ShardSpec(2, 4).lock_key(100) == 102
    settings = load_settings()
    queues = Queues.from_settings(settings.model_copy(
        update={"writer": settings.writer.model_copy(update={"shards": 2})}))
    assert queues.for_shard(1).writes == ("writes.fast.1", "writes.bulk.1")
    k = jump_hash(5, 2)
    assert queues.lanes_for(5) == (f"writes.fast.{k}", f"writes.bulk.{k}")
    # One shard keeps the names an unsharded deployment always had
    assert Queues.from_settings(load_settings()).lanes_for(5) == ("writes.fast", "writes.bulk")


def test_broker_url_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    assert load_settings().broker_kind == "rabbitmq"
    monkeypatch.setenv("BROKER_URL", "kafka://x")
    with pytest.raises(ConfigError, match=r"BROKER_URL: .*amqp://"):
        load_settings()
    monkeypatch.setenv("BROKER_URL", "redis://a:6379/0")
    monkeypatch.setenv("REDIS_URL", "redis://b:6379/0")
    with pytest.raises(ConfigError, match="must equal REDIS_URL"):
        load_settings()
    monkeypatch.delenv("REDIS_URL")
    settings = load_settings()
    assert (settings.broker_kind, settings.redis_url) == ("redis", "redis://a:6379/0")
