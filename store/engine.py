"""Opening the store: an async SQLAlchemy engine, migrated to head, and its typed helpers.

    store = await open_store(load_settings(StoreSettings))
    try:
        version = await store.put_snapshot("region", "r1", "state", {"tick": 1})
        async with store.session() as session:  # one transaction, committed on exit
            ...
    finally:
        await store.close()

SQLite (the embedded default) runs in WAL mode with foreign keys on and real transactions
(BEGIN emitted by us, so DDL and savepoints are transactional); PostgreSQL runs through psycopg 3.
Both get the same Alembic migrations, applied at open.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bus.settings import load_settings
from store import models
from store.errors import (
    LogConflict,
    MigrationFailed,
    QueryFailed,
    StoreError,
    StoreUnavailable,
)
from store.models import JsonObject, LogEntry, Snapshot
from store.settings import StoreSettings

__all__ = ["MIGRATIONS", "Store", "open_store"]

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Held while migrating so two processes opening one PostgreSQL database do not race.
_MIGRATION_LOCK = 0x4D56_5354  # "MVST"
_SQLITE_BEGIN = "mapleverse_sqlite_begin"


class Store:
    """An open store: transactions through `session()`, typed helpers, `close()` at the end."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self.url = url  # password masked
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._ops: set[asyncio.Task[Any]] = set()

    async def _in_session(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async with self.session() as session:
            return await fn(session, *args)

    async def finish(self, work: Coroutine[Any, Any, T]) -> T:
        """Run one transaction (a helper's, or a caller's own) to its end even if the caller
        is cancelled meanwhile (a component stopping): a write is then either committed or
        never started, and `close()` waits for it, so no driver thread answers into a closed
        event loop."""
        task = asyncio.get_running_loop().create_task(work)
        self._ops.add(task)
        task.add_done_callback(self._ops.discard)
        return await asyncio.shield(task)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An `AsyncSession` in a transaction: committed on exit, rolled back on an exception."""
        try:
            async with self._sessions.begin() as session:
                yield session
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise StoreUnavailable(_reason(exc), url=self.url) from exc
        except SQLAlchemyError as exc:
            raise QueryFailed(_reason(exc), url=self.url) from exc

    async def close(self) -> None:
        """Finish the operations under way (a few seconds at most), then close every pooled
        connection; the store is not to be used afterwards."""
        if self._ops:
            await asyncio.wait(set(self._ops), timeout=5.0)
        await self.engine.dispose()

    async def get_snapshot(self, owner_kind: str, owner_id: str, key: str) -> Snapshot | None:
        """The snapshot under (owner_kind, owner_id, key), or None."""
        return await self.finish(self._in_session(models.get_snapshot, owner_kind, owner_id, key))

    async def list_snapshots(self, owner_kind: str, owner_id: str | None = None) -> list[Snapshot]:
        """Every snapshot of an owner kind (or one owner), ordered by owner id then key."""
        return await self.finish(self._in_session(models.list_snapshots, owner_kind, owner_id))

    async def put_snapshot(
        self,
        owner_kind: str,
        owner_id: str,
        key: str,
        payload: JsonObject,
        expected_version: int | None = None,
    ) -> int:
        """Store `payload`, return the new version; a stale expected_version: VersionConflict."""
        return await self.finish(
            self._in_session(
                models.put_snapshot, owner_kind, owner_id, key, payload, expected_version
            )
        )

    async def append(self, stream: str, term: int, payload: JsonObject) -> int:
        """Append to `stream` at the next index and return it; a racing writer: LogConflict.

        One statement in its own transaction on a plain connection (no ORM session, no
        savepoint): the hot path of journals and replicated logs."""
        return await self.finish(self._append(stream, term, payload))

    async def _append(self, stream: str, term: int, payload: JsonObject) -> int:
        stmt = models.append_statement(stream, term, payload)
        try:
            async with self.engine.begin() as conn:
                index = await conn.scalar(stmt)
        except IntegrityError as exc:
            raise LogConflict(stream, url=self.url) from exc
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise StoreUnavailable(_reason(exc), url=self.url) from exc
        except SQLAlchemyError as exc:
            raise QueryFailed(_reason(exc), url=self.url) from exc
        assert index is not None
        return int(index)

    async def read(
        self, stream: str, from_index: int = 1, limit: int | None = None
    ) -> list[LogEntry]:
        """Entries of `stream` from `from_index` on, in index order (at most `limit`)."""
        return await self.finish(self._in_session(models.read, stream, from_index, limit))

    async def compact(self, stream: str, before: int) -> int:
        """Drop entries of `stream` below index `before` (kept in a snapshot); how many."""
        return await self.finish(self._in_session(models.compact, stream, before))

    async def last_index(self, stream: str) -> int:
        """The last index of `stream` (0 when empty)."""
        return await self.finish(self._in_session(models.last_index, stream))


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    return f"{type(exc).__name__}: {exc}".strip()


def _masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable url>"


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Turn off the driver's own BEGIN handling; we emit BEGIN in _on_begin below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a fresh file to WAL takes a lock another process
        # opening it at the same moment may hold, and without a timeout that fails at once.
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL makes a commit durable against a crash of the process (kill -9)
        # without an fsync per transaction; only a power loss may take the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Migrations ask for BEGIN IMMEDIATE: the write lock first, so two processes opening one
        # fresh file take turns instead of failing on a stale read of alembic_version.
        connection.exec_driver_sql(connection.get_execution_options().get(_SQLITE_BEGIN, "BEGIN"))


def _make_sqlite_dir(url: URL) -> None:
    """A SQLite file's folder is created on first open (the default lives in .mapleverse/)."""
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def open_store(settings: StoreSettings | None = None) -> Store:
    """Open the database in `settings` (default: from the environment), migrated to head."""
    settings = settings or load_settings(StoreSettings)
    masked = _masked(settings.url)
    try:
        url = make_url(settings.url)
        _make_sqlite_dir(url)
        engine = create_async_engine(
            url,
            echo=settings.echo,
            pool_pre_ping=True,
            # JSON columns through orjson: several times faster than the json module
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
    except (ArgumentError, ImportError, OSError, SQLAlchemyError) as exc:
        raise StoreUnavailable(_reason(exc), url=masked) from exc
    lock: int | None = None
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine)
        lock = await asyncio.to_thread(_lock_first_open, url)
    try:
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (OSError, SQLAlchemyError) as exc:
            await engine.dispose()
            raise StoreUnavailable(_reason(exc), url=masked) from exc
        try:
            async with engine.connect() as connection:
                await connection.execution_options(**{_SQLITE_BEGIN: "BEGIN IMMEDIATE"})
                async with connection.begin():
                    await connection.run_sync(_upgrade)
        except Exception as exc:  # alembic raises its own errors and the driver's alike
            await engine.dispose()
            if isinstance(exc, StoreError):
                raise
            raise MigrationFailed(_reason(exc), url=masked) from exc
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock
    return Store(engine, masked)


def _lock_first_open(url: URL) -> int | None:
    """Processes opening one SQLite file take turns until it is in WAL mode and migrated:
    switching a fresh file to WAL needs it alone, and SQLite answers "database is locked" at
    once (no busy wait) when two connections race for it. A `flock` on `<file>.lock`."""
    if url.database in (None, "", ":memory:"):
        return None
    fd = os.open(f"{Path(url.database).expanduser()}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
