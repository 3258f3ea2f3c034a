"""The mesh manager's persistence on SQLite and PostgreSQL: its Raft log, and the fenced state.

PostgreSQL is the local server at 127.0.0.1:5432, a database of its own per test (as in
tests/store); unreachable, its tests skip, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import event, text

from components.mesh_manager.store import Fenced, FencedStore, MeshLogStore, PendingStorage
from mesh import LogEntry, StorageError
from store import QueryFailed, Store, StoreSettings, open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from test_store_postgres import _server_or_skip


def _postgres() -> Iterator[str]:
    name = f"mv_{uuid.uuid4().hex[:8]}"
    with _server_or_skip() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with _server_or_skip() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'mv.db'}"
    else:
        yield from _postgres()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Store]:
    opened = await open_store(StoreSettings(url=db_url))
    yield opened
    await opened.close()


def _entries(term: int, first: int, last: int) -> list[LogEntry]:
    return [LogEntry(term, i, {"op": f"set-{i}", "term": term}) for i in range(first, last + 1)]


def _statements(db: Store, log: MeshLogStore | None = None) -> list[str]:
    """Every SQL statement `db` (and `log`'s own SQLite engine) sends from now on, recorded
    into the returned list."""
    sent: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    if log is not None and log.sync_connection is not None:
        log.sync_connection.set_trace_callback(sent.append)
    return sent


# -- the Raft log ---------------------------------------------------------------------------


async def test_term_vote_and_log_survive_a_restart(db_url: str) -> None:
    db = await open_store(StoreSettings(url=db_url))
    log = MeshLogStore(db, "m1", "n1", exclusive=True)
    storage = log.storage(await log.load())
    assert storage.load() == (0, None, ())
    storage.save_term_vote(1, "n2")
    storage.append(_entries(1, 1, 2))
    storage.save_term_vote(2, "n1")
    storage.append(_entries(2, 3, 3))
    assert await log.flush(storage) == 4 and storage.pending == 0
    await db.close()

    db = await open_store(StoreSettings(url=db_url))
    try:
        state = await MeshLogStore(db, "m1", "n1", exclusive=True).load()
    finally:
        await db.close()
    assert state == storage.load()
    assert (state.term, state.voted_for) == (2, "n1")
    assert [(e.term, e.index, dict(e.command)) for e in state.entries] == [
        (1, 1, {"op": "set-1", "term": 1}),
        (1, 2, {"op": "set-2", "term": 1}),
        (2, 3, {"op": "set-3", "term": 2}),
    ]


async def test_a_truncated_log_is_appended_again(db: Store) -> None:
    log = MeshLogStore(db, "m1", "n1", exclusive=True)
    storage = log.storage(await log.load())
    storage.append(_entries(1, 1, 4))
    await log.flush(storage)
    storage.truncate_from(3)  # a new leader's log disagrees from index 3
    storage.append(_entries(2, 3, 3))
    assert await log.flush(storage) == 2
    storage.truncate_from(2)  # flushed on its own, then appended in a later flush
    await log.flush(storage)
    assert (await log.load()).entries == tuple(_entries(1, 1, 1))
    storage.append(_entries(3, 2, 5))
    await log.flush(storage)
    stored = await log.load()
    assert stored.entries == storage.entries == (*_entries(1, 1, 1), *_entries(3, 2, 5))


async def test_a_failed_flush_stores_nothing_of_it(db: Store) -> None:
    log = MeshLogStore(db, "m1", "n1", exclusive=True)
    storage = log.storage(await log.load())
    storage.save_term_vote(1, "n1")
    storage.append(_entries(1, 1, 3))
    await log.flush(storage)
    before = await log.load()

    storage.save_term_vote(2, "n3")
    storage.truncate_from(2)
    storage.append([LogEntry(2, 2, {"op": "ok"}), LogEntry(2, 3, {"op": object()})])
    with pytest.raises(QueryFailed, match="JSON"):
        await log.flush(storage)
    assert await log.load() == before  # neither the vote, the truncation nor the good entry
    assert storage.pending == 3  # still to be written


async def test_a_failed_flush_can_be_tried_again(db: Store) -> None:
    log = MeshLogStore(db, "m1", "n1", exclusive=True)
    storage = log.storage(await log.load())
    storage.save_term_vote(1, "n1")
    storage.append(_entries(1, 1, 2))
    # Another writer took index 2 of this node's stream (an operator's mistake, say).
    await db.append(log.stream, 9, {"op": "intruder"})
    await db.append(log.stream, 9, {"op": "intruder"})
    await db.compact(log.stream, 2)
    with pytest.raises(QueryFailed):
        await log.flush(storage)
    assert (await log.load()).term == 0 and storage.pending == 2
    await db.compact(log.stream, 3)
    assert await log.flush(storage) == 2
    assert await log.load() == storage.load()


async def test_nothing_pending_sends_nothing(db: Store) -> None:
    log = MeshLogStore(db, "m1", "n1", exclusive=True)
    storage = log.storage(await log.load())
    sent = _statements(db, log)
    assert await log.flush(storage) == 0
    storage.save_term_vote(1, None)
    assert await log.flush(storage) == 1
    count = len(sent)
    assert count > 0
    assert await log.flush(storage) == 0
    assert len(sent) == count  # no BEGIN, no query, no COMMIT


async def test_consecutive_appends_are_one_write_in_one_transaction(db: Store) -> None:
    log = MeshLogStore(db, "m1", "n1", exclusive=True)
    storage = log.storage(await log.load())
    storage.save_term_vote(1, None)
    storage.save_term_vote(1, "n1")
    for entry in _entries(1, 1, 5):
        storage.append([entry])
    sent = _statements(db, log)
    assert await log.flush(storage) == 7
    inserts = [s for s in sent if s.startswith("INSERT INTO log_entries")]
    votes = [s for s in sent if s.startswith("INSERT INTO snapshots")]
    if log.sync_connection is None:  # PostgreSQL: one multi-row INSERT
        assert len(inserts) == 1
    else:  # SQLite's plain connection: one prepared INSERT run per row, in one transaction
        assert len(inserts) == 5  # (the trace shows each row's values filled in)
        assert [s for s in sent if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
    assert len(votes) == 1  # two votes in a row: only the last is written
    assert (await log.load()) == (1, "n1", tuple(_entries(1, 1, 5)))


async def test_pending_storage_still_checks_the_contract_and_records_no_refused_write() -> None:
    storage = PendingStorage(3, "n1", _entries(3, 1, 2))
    assert storage.pending == 0  # what it was loaded with is stored already
    with pytest.raises(StorageError):
        storage.append(_entries(3, 4, 4))  # a gap
    with pytest.raises(StorageError):
        storage.save_term_vote(2, None)  # a term going back
    with pytest.raises(StorageError):
        storage.truncate_from(3)
    storage.append([])
    assert storage.pending == 0


async def test_nodes_and_meshes_keep_their_own_logs(db: Store) -> None:
    logs = [MeshLogStore(db, mesh, node) for mesh in ("m1", "m2") for node in ("n1", "n2")]
    for term, log in enumerate(logs, start=1):
        storage = log.storage(await log.load())
        storage.save_term_vote(term, log.owner)
        storage.append(_entries(term, 1, term))
        await log.flush(storage)
    for term, log in enumerate(logs, start=1):
        assert await log.load() == (term, log.owner, tuple(_entries(term, 1, term)))


# -- the fenced mesh state ------------------------------------------------------------------


async def test_a_lower_token_is_refused_and_changes_nothing(db: Store) -> None:
    fenced = FencedStore(db)
    assert await fenced.highest_token("m1") == 0
    assert await fenced.write("m1", "state", {"round": 1}, token=5) == 1
    before = await fenced.read("m1", "state")

    with pytest.raises(Fenced) as info:
        await fenced.write("m1", "state", {"round": 99}, token=3)
    assert (info.value.mesh, info.value.token, info.value.highest) == ("m1", 3, 5)
    assert "mesh 'm1': write with fencing token 3 refused, the store has seen 5" in str(info.value)
    assert await fenced.read("m1", "state") == before
    assert await fenced.highest_token("m1") == 5

    assert await fenced.write("m1", "state", {"round": 2}, token=5) == 2  # the same leader
    assert await fenced.write("m1", "state", {"round": 3}, token=7) == 3  # a newer one
    record = await fenced.read("m1", "state")
    assert record is not None
    assert (record.version, record.token, record.payload) == (3, 7, {"round": 3})
    assert before is not None and record.updated_at >= before.updated_at
    assert await fenced.highest_token("m1") == 7


async def test_write_many_is_all_or_nothing(db: Store) -> None:
    fenced = FencedStore(db)
    await fenced.write_many("m1", {"game/1": {"n": 1}, "game/2": {"n": 2}}, token=2)
    with pytest.raises(Fenced):
        await fenced.write_many("m1", {"game/1": {"n": 10}, "game/3": {"n": 3}}, token=1)
    # A higher token, but one payload cannot be stored: the others and the fence stay as they were.
    with pytest.raises(QueryFailed):
        await fenced.write_many("m1", {"game/1": {"n": 10}, "game/3": {"n": object()}}, token=9)
    assert await fenced.keys("m1") == ["game/1", "game/2"]
    assert await fenced.highest_token("m1") == 2
    first = await fenced.read("m1", "game/1")
    assert first is not None and (first.version, first.payload) == (1, {"n": 1})

    await fenced.write_many("m1", {"game/1": {"n": 11}, "game/3": {"n": 3}}, token=2)
    records = [await fenced.read("m1", key) for key in ("game/1", "game/2", "game/3")]
    assert [(r.version, r.payload) for r in records if r] == [
        (2, {"n": 11}),
        (1, {"n": 2}),
        (1, {"n": 3}),
    ]


async def test_keys_are_listed_by_prefix_taken_literally(db: Store) -> None:
    fenced = FencedStore(db)
    records: dict[str, dict[str, Any]] = {
        k: {} for k in ("game/1/a", "game/10/b", "game_x", "gamey", "state")
    }
    await fenced.write_many("m1", records, token=1)
    assert await fenced.keys("m1") == sorted(records)
    assert await fenced.keys("m1", "game/1") == ["game/1/a", "game/10/b"]
    assert await fenced.keys("m1", "game_") == ["game_x"]  # `_` is no wildcard
    assert await fenced.keys("m1", "nothing") == [] and await fenced.read("m1", "nope") is None


async def test_meshes_are_fenced_apart(db: Store) -> None:
    fenced = FencedStore(db)
    await fenced.write("m1", "state", {"mesh": 1}, token=8)
    assert await fenced.write("m2", "state", {"mesh": 2}, token=1) == 1  # m1's fence is not m2's
    with pytest.raises(Fenced):
        await fenced.write("m1", "state", {"mesh": 1}, token=2)
    assert await fenced.write("m2", "other", {"mesh": 2}, token=2) == 1
    assert (await fenced.highest_token("m1"), await fenced.highest_token("m2")) == (8, 2)
    assert (await fenced.keys("m1"), await fenced.keys("m2")) == (["state"], ["other", "state"])
    m1 = await fenced.read("m1", "state")
    assert m1 is not None and m1.payload == {"mesh": 1}


async def test_a_token_must_be_a_term(db: Store) -> None:
    with pytest.raises(ValueError, match="fencing token"):
        await FencedStore(db).write("m1", "state", {}, token=0)


async def test_of_racing_writers_the_higher_token_has_the_last_word(db_url: str) -> None:
    """Two stores (two connection pools), a writer with token 3 and one with 5 racing for one
    key, again and again: the 3 either lands first or is refused, never after the 5."""
    one = await open_store(StoreSettings(url=db_url))
    two = await open_store(StoreSettings(url=db_url))
    try:
        for round_ in range(20):
            mesh = f"race{round_}"
            low = FencedStore(one).write(mesh, "state", {"by": 3}, token=3)
            high = FencedStore(two).write(mesh, "state", {"by": 5}, token=5)
            pair = (low, high) if round_ % 2 else (high, low)
            results = await asyncio.gather(*pair, return_exceptions=True)
            assert all(isinstance(r, int | Fenced) for r in results), results
            record = await FencedStore(one).read(mesh, "state")
            assert record is not None and (record.token, record.payload) == (5, {"by": 5})
    finally:
        await one.close()
        await two.close()


@pytest.mark.postgres
@pytest.mark.parametrize("first_write", [True, False], ids=["first-write", "later-write"])
async def test_a_lower_token_waiting_for_a_higher_one_is_refused_on_postgres(
    pg_url: str, first_write: bool
) -> None:
    """A writer with token 5 holds the mesh's fence row in an open transaction; a writer with
    token 3 arrives and must wait, then is refused once the 5 commits."""
    db = await open_store(StoreSettings(url=pg_url))
    fenced = FencedStore(db)
    if not first_write:
        await fenced.write("m1", "state", {"by": 1}, token=1)
    conninfo = pg_url.replace("postgresql+psycopg", "postgresql")
    try:
        async with await psycopg.AsyncConnection.connect(conninfo) as holder:
            await holder.execute(
                "INSERT INTO mesh_fences (mesh, token, updated_at) VALUES ('m1', 5, now()) "
                "ON CONFLICT (mesh) DO UPDATE SET token = 5"
            )
            low = asyncio.create_task(fenced.write("m1", "state", {"by": 3}, token=3))
            await _until_a_backend_waits_for_a_lock(db)
            assert not low.done()
            await holder.commit()
        with pytest.raises(Fenced) as info:
            await low
        assert info.value.highest == 5
        record = await fenced.read("m1", "state")
        assert (record.payload if record else None) == (None if first_write else {"by": 1})
    finally:
        await db.close()


async def _until_a_backend_waits_for_a_lock(db: Store) -> None:
    async with db.engine.connect() as conn:
        for _ in range(500):
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting:
                return
            await conn.rollback()  # a fresh snapshot of pg_stat_activity next time
            await asyncio.sleep(0.01)
    raise AssertionError("the lower-token writer never waited for the fence row")
