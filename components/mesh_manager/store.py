"""A mesh manager's persistence: its own Raft state, and the mesh state its leader writes.

- `MeshLogStore` keeps one manager's term, vote and log. `RaftNode` is synchronous and writes
  through a `PendingStorage` (in memory, recording each write); the component flushes those
  writes in one transaction before it sends what the node returned, so a vote or an entry is
  durable before the message that depends on it leaves:

      storage = log_store.storage(await log_store.load())
      node = RaftNode(..., storage=storage)
      envelopes = node.receive(message, now)
      await log_store.flush(storage)  # then publish envelopes

  The vote is the snapshot ("raft", "{mesh}/{node}", "vote"); the log is the stream
  "raft/{mesh}/{node}" of `log_entries`, one row per entry at its own index.

- `FencedStore` holds what the leader writes for everyone (the applied mesh state, game
  history). Every write carries the writer's Raft term as a fencing token, and one row per mesh
  in `mesh_fences` holds the highest token seen: a lower token is refused with `Fenced`, in the
  transaction of the write, so a leader deposed while paused writes nothing when it wakes.

Both write Core statements (the ORM's bookkeeping costs about half a millisecond a
transaction, on the path every Raft message waits for). On SQLite, `MeshLogStore.flush` goes
further: it writes through a plain `sqlite3` connection of its own, in the event loop, with
prepared statements. A flush is a few rows in a WAL file (about 0.1 ms), less than the hops
to and from aiosqlite's thread it saves, twice per commit (leader and follower). The file is the
manager's own (`MeshManagerSettings.log_url`), so nothing else holds its lock for long.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import (
    Row,
    Select,
    Table,
    delete,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.messages import LogEntry
from mesh.storage import MemoryStorage, StoredState
from store import Store, models, plain_sqlite
from store.errors import Fenced, QueryFailed
from store.models import JsonObject

__all__ = ["Fenced", "FencedStore", "MeshLogStore", "PendingStorage", "Record"]

T = TypeVar("T")

_LOG = cast(Table, models.LogEntryRow.__table__)
_FENCES = cast(Table, models.MeshFenceRow.__table__)
_RECORDS = cast(Table, models.MeshRecordRow.__table__)


@asynccontextmanager
async def _transaction(store: Store) -> AsyncIterator[AsyncSession]:
    """`store.session()`, where a payload that is not JSON is `QueryFailed` on every database
    (psycopg encodes JSON itself and lets the encoder's TypeError through unwrapped)."""
    try:
        async with store.session() as session:
            yield session
    except TypeError as exc:
        raise QueryFailed(f"a payload is not JSON: {exc}", url=store.url) from exc


@dataclass(frozen=True, slots=True)
class _Vote:
    term: int
    voted_for: str | None


@dataclass(frozen=True, slots=True)
class _Append:
    entries: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class _Truncate:
    index: int


_Op = _Vote | _Append | _Truncate


class PendingStorage(MemoryStorage):
    """`MemoryStorage` (it keeps checking the contract) that also records each write for
    `MeshLogStore.flush`. Alone it is not durable: its writes are, once flushed."""

    def __init__(
        self, term: int = 0, voted_for: str | None = None, entries: Sequence[LogEntry] = ()
    ) -> None:
        self._ops: list[_Op] = []
        super().__init__(term, voted_for, entries)
        self._ops.clear()  # the entries it starts from are stored already

    @property
    def pending(self) -> int:
        """Writes not yet flushed."""
        return len(self._ops)

    def save_term_vote(self, term: int, voted_for: str | None) -> None:
        super().save_term_vote(term, voted_for)
        self._ops.append(_Vote(term, voted_for))

    def append(self, entries: Sequence[LogEntry]) -> None:
        super().append(entries)
        if entries:
            self._ops.append(_Append(tuple(entries)))

    def truncate_from(self, index: int) -> None:
        super().truncate_from(index)
        self._ops.append(_Truncate(index))


def _batches(ops: Iterable[_Op]) -> Iterable[_Op]:
    """`ops` in order, each run of appends made one (one multi-row INSERT) and each run of
    votes reduced to its last (the only one that stands)."""
    for kind, run in itertools.groupby(ops, type):
        group = list(run)
        if kind is _Append:
            yield _Append(tuple(e for op in group if isinstance(op, _Append) for e in op.entries))
        elif kind is _Vote:
            yield group[-1]
        else:
            yield from group


class MeshLogStore:
    """One manager's Raft state in the shared store: term + vote, and its log."""

    def __init__(self, store: Store, mesh: str, node: str, *, exclusive: bool = False) -> None:
        """`exclusive`: nothing else in this process writes to `store` (its own log file),
        so on SQLite flushes may take the plain connection (`store.plain`)."""
        self.store = store
        self.owner = f"{mesh}/{node}"
        self.stream = f"raft/{mesh}/{node}"
        self._flushing = asyncio.Lock()
        self._sync = plain_sqlite(store) if exclusive else None

    @property
    def sync_connection(self) -> sqlite3.Connection | None:
        """The plain connection flushes go through on SQLite (None on other databases)."""
        return self._sync

    def close(self) -> None:
        """Close the plain SQLite connection (the store itself is the caller's)."""
        if self._sync is not None:
            self._sync.close()

    async def load(self) -> StoredState:
        """The term, vote and log as last flushed (0, None, () for a new node)."""
        return await self.store.finish(self._load())

    async def _load(self) -> StoredState:
        async with self.store.session() as session:
            vote = await models.get_snapshot(session, "raft", self.owner, "vote")
            rows = await models.read(session, self.stream)
        term, voted_for = 0, None
        if vote is not None:
            term, voted_for = int(vote.payload["term"]), vote.payload["voted_for"]
        entries = tuple(LogEntry(row.term, row.index, row.payload) for row in rows)
        return StoredState(term, voted_for if isinstance(voted_for, str) else None, entries)

    def storage(self, state: StoredState) -> PendingStorage:
        """The `RaftStorage` to hand `RaftNode`, starting from `state` (what `load` returned)."""
        return PendingStorage(state.term, state.voted_for, state.entries)

    async def flush(self, pending: PendingStorage) -> int:
        """Persist every write `pending` recorded since the last flush, in order and in one
        transaction; return how many. Nothing pending: no transaction at all. On an error
        nothing was stored and the writes stay pending, so the flush can be tried again (the
        messages that depend on them must not be sent meanwhile)."""
        if not pending.pending:
            return 0
        if self._sync is not None:
            return self._flush_sync(pending)
        return await self.store.finish(self._flush(pending))

    def _flush_sync(self, pending: PendingStorage) -> int:
        conn = self._sync
        assert conn is not None
        ops = list(pending._ops)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in _batches(ops):
                    self._write_sync(conn, op)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except TypeError as exc:
            raise QueryFailed(f"a payload is not JSON: {exc}", url=self.store.url) from exc
        except sqlite3.Error as exc:
            raise QueryFailed(str(exc), url=self.store.url) from exc
        del pending._ops[: len(ops)]  # only once committed
        return len(ops)

    def _write_sync(self, conn: sqlite3.Connection, op: _Op) -> None:
        if isinstance(op, _Vote):
            payload = orjson.dumps({"term": op.term, "voted_for": op.voted_for}).decode()
            # the text SQLAlchemy's SQLite DateTime stores (UtcDateTime reads it back as UTC)
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute(_VOTE_SQL, ("raft", self.owner, "vote", payload, now))
        elif isinstance(op, _Append):
            conn.executemany(
                _APPEND_SQL,
                [
                    (self.stream, e.index, e.term, orjson.dumps(dict(e.command)).decode())
                    for e in op.entries
                ],
            )
        else:
            conn.execute(_TRUNCATE_SQL, (self.stream, op.index))

    def _rows(self, op: _Append) -> list[dict[str, Any]]:
        return [
            {"stream": self.stream, "index": e.index, "term": e.term, "payload": dict(e.command)}
            for e in op.entries
        ]

    async def _flush(self, pending: PendingStorage) -> int:
        async with self._flushing:  # one flush at a time, so no write is stored twice
            ops = list(pending._ops)
            if not ops:
                return 0
            async with _transaction(self.store) as session:
                for op in _batches(ops):
                    await self._write(session, op)
            del pending._ops[: len(ops)]  # only once committed
            return len(ops)

    async def _write(self, session: AsyncSession, op: _Op) -> None:
        if isinstance(op, _Vote):
            payload = {"term": op.term, "voted_for": op.voted_for}
            await models.put_snapshot(session, "raft", self.owner, "vote", payload)
        elif isinstance(op, _Append):
            await session.execute(insert(_LOG).values(self._rows(op)))
        else:
            where = (_LOG.c.stream == self.stream, _LOG.c.index >= op.index)
            await session.execute(delete(_LOG).where(*where))


_VOTE_SQL = (
    "INSERT INTO snapshots (owner_kind, owner_id, key, version, payload, updated_at) "
    "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (owner_kind, owner_id, key) DO UPDATE SET "
    "version = version + 1, payload = excluded.payload, updated_at = excluded.updated_at"
)
_APPEND_SQL = 'INSERT INTO log_entries (stream, "index", term, payload) VALUES (?, ?, ?, ?)'
_TRUNCATE_SQL = 'DELETE FROM log_entries WHERE stream = ? AND "index" >= ?'


@dataclass(frozen=True, slots=True)
class Record:
    """One key of a mesh's fenced state: `version` counts its writes from 1, `token` is the
    fencing token of the last one."""

    key: str
    version: int
    token: int
    payload: JsonObject
    updated_at: datetime


def _upsert(session: AsyncSession, table: Table) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class FencedStore:
    """What the mesh leader writes for everyone (the applied mesh state, game history): every
    write carries the writer's Raft term as a fencing token; a write whose token is lower than
    the highest this mesh has seen is refused, so a deposed leader that comes back from a pause
    writes nothing. Equal tokens pass: one leader writes many times in its term."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def write(self, mesh: str, key: str, payload: dict[str, Any], token: int) -> int:
        """Store `payload` under `key` and return its new version (1, 2, ...); `Fenced` when
        the mesh has seen a higher token."""
        versions = await self.store.finish(self._write(mesh, {key: payload}, token))
        return versions[0]

    async def write_many(
        self, mesh: str, records: Mapping[str, dict[str, Any]], token: int
    ) -> None:
        """Store every record under its key in one transaction, under one fence check: all of
        them or, on `Fenced` or any error, none. An empty mapping writes nothing."""
        if records:
            await self.store.finish(self._write(mesh, records, token))

    async def _write(
        self, mesh: str, records: Mapping[str, dict[str, Any]], token: int
    ) -> list[int]:
        if token < 1:
            raise ValueError(f"a fencing token is a leader's term (1 or more), got {token}")
        now = datetime.now(UTC)
        async with _transaction(self.store) as session:
            # The fence first. On PostgreSQL, ON CONFLICT DO UPDATE locks the mesh's row (or
            # waits for a racing first INSERT to commit) before it checks the WHERE against the
            # committed token: of two racing writers, a lower token that comes second is
            # refused, and the lock orders this mesh's writes until commit. SQLite writes
            # serialise anyway (the first statement takes the write lock).
            fence = _upsert(session, _FENCES).values(mesh=mesh, token=token, updated_at=now)
            fence = fence.on_conflict_do_update(
                index_elements=["mesh"],
                set_={"token": fence.excluded.token, "updated_at": now},
                where=_FENCES.c.token <= fence.excluded.token,
            )
            if await session.scalar(fence.returning(_FENCES.c.token)) is None:
                highest = await session.scalar(
                    select(_FENCES.c.token).where(_FENCES.c.mesh == mesh)
                )
                raise Fenced(mesh, token=token, highest=int(highest or 0), url=self.store.url)
            rows = [
                {"mesh": mesh, "key": key, "version": 1, "token": token}
                | {"payload": payload, "updated_at": now}
                for key, payload in records.items()
            ]
            data = _upsert(session, _RECORDS).values(rows)
            data = data.on_conflict_do_update(
                index_elements=["mesh", "key"],
                set_={
                    "version": _RECORDS.c.version + 1,
                    "token": data.excluded.token,
                    "payload": data.excluded.payload,
                    "updated_at": data.excluded.updated_at,
                },
            )
            return list(await session.scalars(data.returning(_RECORDS.c.version)))

    async def read(self, mesh: str, key: str) -> Record | None:
        """The record under `key` in `mesh`, or None."""
        c = _RECORDS.c
        query = select(c.key, c.version, c.token, c.payload, c.updated_at)
        for r in await self._rows(query.where(c.mesh == mesh, c.key == key)):
            return Record(r.key, r.version, r.token, r.payload, r.updated_at)
        return None

    async def keys(self, mesh: str, prefix: str = "") -> list[str]:
        """The keys of `mesh` that start with `prefix`, sorted."""
        query = select(_RECORDS.c.key).where(_RECORDS.c.mesh == mesh).order_by(_RECORDS.c.key)
        if prefix:
            query = query.where(_RECORDS.c.key.startswith(prefix, autoescape=True))
        return [row.key for row in await self._rows(query)]

    async def highest_token(self, mesh: str) -> int:
        """The highest fencing token `mesh` has accepted (0 when nothing was written)."""
        rows = await self._rows(select(_FENCES.c.token).where(_FENCES.c.mesh == mesh))
        return int(rows[0].token) if rows else 0

    async def _rows(self, query: Select[Any]) -> list[Row[Any]]:
        return await self.store.finish(_fetch(self.store, query))


async def _fetch(store: Store, query: Select[Any]) -> list[Row[Any]]:
    async with store.session() as session:
        return list(await session.execute(query))
