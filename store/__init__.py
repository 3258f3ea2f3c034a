"""Persistence every component builds on (SQLAlchemy 2 + Alembic) and the cache interface.

SQLite is the embedded default, PostgreSQL the deployment; the same migrations serve both.
"""

from __future__ import annotations

from store.cache import Cache, Clock, MemoryCache, RedisCache
from store.engine import Store, open_store
from store.errors import (
    CacheError,
    LogConflict,
    MigrationFailed,
    QueryFailed,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from store.models import Base, JsonObject, LogEntry, Snapshot
from store.plain import plain_sqlite
from store.settings import RedisSettings, StoreSettings

__all__ = [
    "Base",
    "Cache",
    "CacheError",
    "Clock",
    "JsonObject",
    "LogConflict",
    "LogEntry",
    "MemoryCache",
    "MigrationFailed",
    "QueryFailed",
    "RedisCache",
    "RedisSettings",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreSettings",
    "StoreUnavailable",
    "VersionConflict",
    "open_store",
    "plain_sqlite",
]
