"""The cache: rate limits, idempotency keys and small cached values behind one interface.

`MemoryCache` serves the embedded mode (one process); `RedisCache` serves a deployment, where
every process shares one Redis. Both honour TTLs; values are bytes.

- `incr_window(key, window_seconds)`: a fixed-window counter; the count of calls in the
  current window (windows are aligned on multiples of `window_seconds` of the clock).
- `claim(key, ttl)`: true for the first claimer only, until `ttl` seconds have passed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from store.errors import CacheError
from store.settings import RedisSettings

__all__ = ["Cache", "Clock", "MemoryCache", "RedisCache"]

Clock = Callable[[], float]


@runtime_checkable
class Cache(Protocol):
    """What components ask of a cache; keys are plain strings, values bytes."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def incr_window(self, key: str, window_seconds: float) -> int: ...

    async def claim(self, key: str, ttl: float) -> bool: ...

    async def close(self) -> None: ...


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


class MemoryCache:
    """An in-process cache; `clock` (seconds, default `time.monotonic`) is injectable for tests."""

    _SWEEP_EVERY = 1024

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires at)
        self._ops = 0

    def _live(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._items[key]
            return None
        return item[0]

    def _tick(self) -> None:
        self._ops += 1
        if self._ops % self._SWEEP_EVERY == 0:
            now = self._clock()
            for key in [k for k, (_, exp) in self._items.items() if exp <= now]:
                del self._items[key]

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        if ttl is not None:
            _check_positive("ttl", ttl)
        self._tick()
        self._items[key] = (bytes(value), math.inf if ttl is None else self._clock() + ttl)

    async def delete(self, key: str) -> bool:
        existed = self._live(key) is not None
        self._items.pop(key, None)
        return existed

    async def incr_window(self, key: str, window_seconds: float) -> int:
        _check_positive("window_seconds", window_seconds)
        self._tick()
        now = self._clock()
        window = math.floor(now / window_seconds)
        slot = f"{key}\x00window:{window}"
        count = int(self._live(slot) or b"0") + 1
        self._items[slot] = (str(count).encode(), (window + 1) * window_seconds)
        return count

    async def claim(self, key: str, ttl: float) -> bool:
        _check_positive("ttl", ttl)
        self._tick()
        if self._live(key) is not None:
            return False
        self._items[key] = (b"1", self._clock() + ttl)
        return True

    async def close(self) -> None:
        self._items.clear()


class RedisCache:
    """A cache in Redis, every key under `prefix`; windows follow `clock` (default wall time)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "mv:",
        clock: Clock = time.time,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._clock = clock
        self._redis = client or aioredis.Redis.from_url(url)

    @classmethod
    def from_settings(cls, settings: RedisSettings | None = None) -> RedisCache:
        """A cache at `MAPLEVERSE_REDIS_URL` with keys under `MAPLEVERSE_REDIS_PREFIX`."""
        settings = settings or RedisSettings()
        return cls(settings.url, prefix=settings.prefix)

    def _error(self, exc: RedisError) -> CacheError:
        return CacheError(f"{type(exc).__name__}: {exc}", url=self.url)

    async def ping(self) -> None:
        """Raise CacheError unless Redis answers."""
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise self._error(exc) from exc

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self.prefix + key)
        except RedisError as exc:
            raise self._error(exc) from exc
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        if ttl is not None:
            _check_positive("ttl", ttl)
        px = None if ttl is None else max(1, math.ceil(ttl * 1000))
        try:
            await self._redis.set(self.prefix + key, value, px=px)
        except RedisError as exc:
            raise self._error(exc) from exc

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._redis.delete(self.prefix + key))
        except RedisError as exc:
            raise self._error(exc) from exc

    async def incr_window(self, key: str, window_seconds: float) -> int:
        _check_positive("window_seconds", window_seconds)
        window = math.floor(self._clock() / window_seconds)
        slot = f"{self.prefix}{key}:window:{window}"
        # The slot is unique to its window, so it may outlive it by a window; never longer.
        px = max(1, math.ceil(window_seconds * 2000))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(slot)
                pipe.pexpire(slot, px)
                count, _ = await pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from exc
        return int(count)

    async def claim(self, key: str, ttl: float) -> bool:
        _check_positive("ttl", ttl)
        px = max(1, math.ceil(ttl * 1000))
        try:
            return bool(await self._redis.set(self.prefix + key, b"1", nx=True, px=px))
        except RedisError as exc:
            raise self._error(exc) from exc

    async def close(self) -> None:
        await self._redis.aclose()
