"""The cache interface: MemoryCache on a fake clock, RedisCache on the local Redis server.

Redis tests use a key prefix of their own (deleted after) and a fake clock for windows; TTLs are
checked through Redis' own PTTL, never by sleeping. When Redis at 127.0.0.1:6379 is
unreachable they skip, or fail when CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from bus.settings import SettingsError, load_settings
from store import Cache, CacheError, MemoryCache, RedisCache, RedisSettings

REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        reason = f"Redis at 127.0.0.1:6379 unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    prefix = f"mvtest:{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
async def redis_cache(prefix: str, clock: FakeClock) -> AsyncIterator[RedisCache]:
    cache = RedisCache(REDIS_URL, prefix=prefix, clock=clock)
    yield cache
    await cache.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cache(request: pytest.FixtureRequest, clock: FakeClock) -> Cache:
    """Each implementation in turn, on the same fake clock."""
    if request.param == "memory":
        return MemoryCache(clock=clock)
    made: Cache = request.getfixturevalue("redis_cache")
    return made


async def test_values_round_trip_and_delete(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"v1")
    await cache.set("k", b"v2")
    assert await cache.get("k") == b"v2"
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.get("k") is None


async def test_a_fixed_window_counts_calls_and_starts_again_next_window(
    cache: Cache, clock: FakeClock
) -> None:
    clock.now = 600.0  # the start of a 60 s window
    assert [await cache.incr_window("rate:a1", 60) for _ in range(3)] == [1, 2, 3]
    assert await cache.incr_window("rate:a2", 60) == 1
    clock.advance(59.9)
    assert await cache.incr_window("rate:a1", 60) == 4
    clock.advance(0.1)
    assert await cache.incr_window("rate:a1", 60) == 1
    assert await cache.incr_window("rate:a1", 60) == 2


async def test_only_the_first_claimer_wins(cache: Cache) -> None:
    assert await cache.claim("msg:42", ttl=30) is True
    assert await cache.claim("msg:42", ttl=30) is False
    assert await cache.claim("msg:43", ttl=30) is True


@pytest.mark.parametrize("call", ["set", "incr_window", "claim"])
async def test_non_positive_durations_are_refused(cache: Cache, call: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        if call == "set":
            await cache.set("k", b"v", ttl=0)
        elif call == "incr_window":
            await cache.incr_window("k", 0)
        else:
            await cache.claim("k", -1)


def test_both_caches_satisfy_the_protocol() -> None:
    assert isinstance(MemoryCache(), Cache)
    assert isinstance(RedisCache(REDIS_URL), Cache)


async def test_memory_values_expire_after_their_ttl(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    await cache.set("short", b"x", ttl=5)
    await cache.set("forever", b"y")
    clock.advance(4.9)
    assert await cache.get("short") == b"x"
    clock.advance(0.1)
    assert await cache.get("forever") == b"y"
    assert await cache.delete("short") is False, "an expired value counts as gone"
    assert await cache.get("short") is None


async def test_a_memory_claim_can_be_taken_again_after_its_ttl(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    assert await cache.claim("msg:1", ttl=10) is True
    clock.advance(9.99)
    assert await cache.claim("msg:1", ttl=10) is False
    clock.advance(0.01)
    assert await cache.claim("msg:1", ttl=10) is True


async def test_memory_forgets_expired_keys_it_is_not_asked_about(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    for i in range(100):
        await cache.claim(f"once:{i}", ttl=1)
    clock.advance(2)
    for _ in range(MemoryCache._SWEEP_EVERY):
        await cache.incr_window("hot", 1)
        clock.advance(1)
    assert [key for key in cache._items if key.startswith("once:")] == []


@pytest.mark.redis
async def test_redis_keys_carry_the_prefix_and_the_ttl(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    cache = RedisCache(REDIS_URL, prefix=prefix)
    other = RedisCache(REDIS_URL, prefix=prefix + "other:")
    try:
        await cache.set("k", b"v", ttl=30)
        assert await redis_client.get(f"{prefix}k") == b"v"
        assert 0 < await redis_client.pttl(f"{prefix}k") <= 30_000
        assert await other.get("k") is None
        assert await cache.claim("claim", ttl=2.5) is True
        assert 0 < await redis_client.pttl(f"{prefix}claim") <= 2_500
        assert await cache.incr_window("rate", 10) == 1
        windows = [key async for key in redis_client.scan_iter(match=f"{prefix}rate:*")]
        assert len(windows) == 1
        assert 0 < await redis_client.pttl(windows[0]) <= 20_000
    finally:
        await cache.close()
        await other.close()


@pytest.mark.redis
async def test_redis_settings_build_a_working_cache(
    redis_client: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAPLEVERSE_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("MAPLEVERSE_REDIS_PREFIX", prefix)
    cache = RedisCache.from_settings(load_settings(RedisSettings))
    try:
        await cache.ping()
        await cache.set("k", b"v")
    finally:
        await cache.close()
    assert await redis_client.get(f"{prefix}k") == b"v"


def test_redis_settings_default_to_the_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAPLEVERSE_REDIS_URL", raising=False)
    assert load_settings(RedisSettings).url == "redis://127.0.0.1:6379/0"


def test_a_bad_redis_url_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(SettingsError, match="MAPLEVERSE_REDIS_URL"):
        load_settings(RedisSettings)


async def test_an_unreachable_redis_is_reported_without_its_password() -> None:
    cache = RedisCache("redis://:s3cret@127.0.0.1:1/0")
    try:
        with pytest.raises(CacheError) as info:
            await cache.get("k")
    finally:
        await cache.close()
    assert "s3cret" not in str(info.value)
    assert info.value.url == "redis://:***@127.0.0.1:1/0"
    assert info.value.__cause__ is not None
