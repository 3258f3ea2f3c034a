"""Tables every component builds on, and the queries over them.

- `snapshots`: the latest state of one piece of an owner's state (a world region, a swarm, an
  agent), one row per (owner_kind, owner_id, key), with a version for optimistic concurrency.
- `log_entries`: append-only numbered streams (the mesh's committed log): (stream, index) is
  unique, indexes start at 1 and have no gaps when one owner appends.
- `mesh_fences` and `mesh_records`: what a mesh leader writes for the whole mesh, fenced by its
  Raft term (one `mesh_fences` row per mesh holds the highest token seen); the queries are in
  `components.mesh_manager.store`.

The query functions take an `AsyncSession` so a caller can group several in one transaction;
`Store` offers each of them in a transaction of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    TypeDecorator,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.errors import LogConflict, VersionConflict

__all__ = [
    "Base",
    "JsonObject",
    "LogEntry",
    "LogEntryRow",
    "MeshFenceRow",
    "MeshRecordRow",
    "Snapshot",
    "SnapshotRow",
    "append",
    "get_snapshot",
    "last_index",
    "list_snapshots",
    "put_snapshot",
    "read",
]

JsonObject = dict[str, Any]

# Stable constraint names on every dialect, so migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSON_TYPE = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every dialect (SQLite keeps no zone; it comes back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; pass an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table; later components add theirs to `Base.metadata`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SnapshotRow(Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("owner_kind", "owner_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_kind: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    payload: Mapped[JsonObject] = mapped_column(JSON_TYPE)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LogEntryRow(Base):
    __tablename__ = "log_entries"
    __table_args__ = (PrimaryKeyConstraint("stream", "index"),)

    stream: Mapped[str] = mapped_column(String(255))
    index: Mapped[int] = mapped_column(Integer)
    term: Mapped[int] = mapped_column(Integer)
    payload: Mapped[JsonObject] = mapped_column(JSON_TYPE)


class MeshFenceRow(Base):
    __tablename__ = "mesh_fences"

    mesh: Mapped[str] = mapped_column(String(255), primary_key=True)
    token: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class MeshRecordRow(Base):
    __tablename__ = "mesh_records"
    __table_args__ = (PrimaryKeyConstraint("mesh", "key"),)

    mesh: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    token: Mapped[int] = mapped_column(Integer)
    payload: Mapped[JsonObject] = mapped_column(JSON_TYPE)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The stored state of one (owner_kind, owner_id, key); version counts writes from 1."""

    owner_kind: str
    owner_id: str
    key: str
    version: int
    payload: JsonObject
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One committed entry of a log stream."""

    stream: str
    index: int
    term: int
    payload: JsonObject


def _snapshot(row: SnapshotRow) -> Snapshot:
    return Snapshot(row.owner_kind, row.owner_id, row.key, row.version, row.payload, row.updated_at)


def _url(session: AsyncSession) -> str:
    return session.get_bind().engine.url.render_as_string(hide_password=True)


async def get_snapshot(
    session: AsyncSession, owner_kind: str, owner_id: str, key: str
) -> Snapshot | None:
    """The snapshot stored under (owner_kind, owner_id, key), or None."""
    row = await session.scalar(
        select(SnapshotRow)
        .where(
            SnapshotRow.owner_kind == owner_kind,
            SnapshotRow.owner_id == owner_id,
            SnapshotRow.key == key,
        )
        .execution_options(populate_existing=True)
    )
    return None if row is None else _snapshot(row)


async def list_snapshots(
    session: AsyncSession, owner_kind: str, owner_id: str | None = None
) -> list[Snapshot]:
    """Every snapshot of an owner kind (or of one owner), ordered by owner id then key."""
    query = select(SnapshotRow).where(SnapshotRow.owner_kind == owner_kind)
    if owner_id is not None:
        query = query.where(SnapshotRow.owner_id == owner_id)
    query = query.order_by(SnapshotRow.owner_id, SnapshotRow.key)
    rows = await session.scalars(query.execution_options(populate_existing=True))
    return [_snapshot(row) for row in rows]


async def put_snapshot(
    session: AsyncSession,
    owner_kind: str,
    owner_id: str,
    key: str,
    payload: JsonObject,
    expected_version: int | None = None,
) -> int:
    """Store `payload` and return the new version.

    `expected_version=None` writes unconditionally; `0` only creates (no snapshot yet); `n`
    only replaces version `n`. Otherwise `VersionConflict` says which version is stored.
    """
    if expected_version is not None and expected_version < 0:
        raise ValueError(f"expected_version must be 0 or more, got {expected_version}")
    now = datetime.now(UTC)
    where = (
        SnapshotRow.owner_kind == owner_kind,
        SnapshotRow.owner_id == owner_id,
        SnapshotRow.key == key,
    )
    values = {"owner_kind": owner_kind, "owner_id": owner_id, "key": key}
    new_version: int | None
    if expected_version is None or expected_version == 0:
        dialect = session.get_bind().dialect.name
        ins = (postgresql if dialect == "postgresql" else sqlite).insert(SnapshotRow)
        ins = ins.values(**values, version=1, payload=payload, updated_at=now)
        conflict_cols = ["owner_kind", "owner_id", "key"]
        if expected_version is None:
            stmt = ins.on_conflict_do_update(
                index_elements=conflict_cols,
                set_={"version": SnapshotRow.version + 1, "payload": payload, "updated_at": now},
            )
        else:
            stmt = ins.on_conflict_do_nothing(index_elements=conflict_cols)
        new_version = await session.scalar(stmt.returning(SnapshotRow.version))
    else:
        new_version = await session.scalar(
            update(SnapshotRow)
            .where(*where, SnapshotRow.version == expected_version)
            .values(version=expected_version + 1, payload=payload, updated_at=now)
            .returning(SnapshotRow.version)
        )
    if new_version is None:
        actual = await session.scalar(select(SnapshotRow.version).where(*where))
        raise VersionConflict(
            owner_kind,
            owner_id,
            key,
            expected=expected_version or 0,
            actual=actual or 0,
            url=_url(session),
        )
    return new_version


async def last_index(session: AsyncSession, stream: str) -> int:
    """The index of the last entry of `stream` (0 when it is empty)."""
    value = await session.scalar(
        select(func.max(LogEntryRow.index)).where(LogEntryRow.stream == stream)
    )
    return int(value or 0)


async def append(session: AsyncSession, stream: str, term: int, payload: JsonObject) -> int:
    """Append one entry to `stream` at the next index and return that index.

    The index is computed and inserted in one statement; a concurrent writer that took the same
    index makes this raise `LogConflict` (DESIGN principle 5: one owner per stream).
    """
    stmt = append_statement(stream, term, payload)
    try:
        async with session.begin_nested():
            index = await session.scalar(stmt)
    except IntegrityError as exc:
        raise LogConflict(stream, url=_url(session)) from exc
    assert index is not None
    return int(index)


def append_statement(stream: str, term: int, payload: JsonObject) -> Any:
    """INSERT of the next entry of `stream`, its index computed in the same statement."""
    next_index = (
        select(func.coalesce(func.max(LogEntryRow.index), 0) + 1)
        .where(LogEntryRow.stream == stream)
        .scalar_subquery()
    )
    return (
        insert(LogEntryRow)
        .values(stream=stream, index=next_index, term=term, payload=payload)
        .returning(LogEntryRow.index)
    )


async def read(
    session: AsyncSession, stream: str, from_index: int = 1, limit: int | None = None
) -> list[LogEntry]:
    """Entries of `stream` with index >= `from_index`, in index order (at most `limit`)."""
    query = (
        select(LogEntryRow)
        .where(LogEntryRow.stream == stream, LogEntryRow.index >= from_index)
        .order_by(LogEntryRow.index)
    )
    if limit is not None:
        query = query.limit(limit)
    rows = await session.scalars(query)
    return [LogEntry(r.stream, r.index, r.term, r.payload) for r in rows]


async def compact(session: AsyncSession, stream: str, before: int) -> int:
    """Drop the entries of `stream` with index < `before` (their effect is in a snapshot);
    returns how many. The entry at `before` and later stay, so indexes keep growing."""
    result = await session.execute(
        delete(LogEntryRow).where(LogEntryRow.stream == stream, LogEntryRow.index < before)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
