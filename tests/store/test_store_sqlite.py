"""The store on SQLite (the embedded default); `StoreContract` is rerun on PostgreSQL.

`StoreContract` asks its subclass for a `db_url` fixture: a fresh, empty database per test.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, select, text

import store
from bus.settings import SettingsError, load_settings
from store import (
    MigrationFailed,
    QueryFailed,
    Store,
    StoreSettings,
    StoreUnavailable,
    VersionConflict,
    open_store,
)
from store.models import Base, LogEntryRow


async def _open(url: str) -> Store:
    return await open_store(StoreSettings(url=url))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _drift(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


class StoreContract:
    """What a user of the store notices, on any database."""

    async def test_open_migrates_a_fresh_database_to_head(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            async with db.engine.connect() as conn:
                tables = await conn.run_sync(_tables)
                head = await conn.scalar(text("SELECT version_num FROM alembic_version"))
                drift = await conn.run_sync(_drift)
        finally:
            await db.close()
        assert {"snapshots", "log_entries", "alembic_version"} <= tables
        assert head == "0002"
        assert drift == [], "the migrations and store.models disagree"

    async def test_a_second_open_changes_nothing(self, db_url: str) -> None:
        db = await _open(db_url)
        await db.put_snapshot("region", "r1", "state", {"tick": 7})
        await db.close()
        db = await _open(db_url)
        try:
            async with db.engine.connect() as conn:
                heads = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            snap = await db.get_snapshot("region", "r1", "state")
        finally:
            await db.close()
        assert [tuple(h) for h in heads] == [("0002",)]
        assert snap is not None and snap.payload == {"tick": 7} and snap.version == 1

    async def test_processes_opening_one_fresh_database_at_once_all_succeed(
        self, db_url: str
    ) -> None:
        opened = await asyncio.gather(*(_open(db_url) for _ in range(4)), return_exceptions=True)
        stores = [s for s in opened if isinstance(s, Store)]
        try:
            assert len(stores) == 4, [o for o in opened if not isinstance(o, Store)]
            assert await stores[0].append("mesh", 1, {}) == 1
            assert await stores[3].append("mesh", 1, {}) == 2
        finally:
            for s in stores:
                await s.close()

    async def test_snapshot_round_trip(self, db_url: str) -> None:
        payload = {"agents": [{"id": "a1", "pos": [1.5, -2.0]}], "name": "Ünïcode", "ok": True}
        db = await _open(db_url)
        try:
            before = datetime.now(UTC)
            version = await db.put_snapshot("swarm", "s1", "state", payload)
            snap = await db.get_snapshot("swarm", "s1", "state")
            assert await db.get_snapshot("swarm", "s1", "other") is None
            assert await db.get_snapshot("swarm", "s2", "state") is None
        finally:
            await db.close()
        assert version == 1
        assert snap is not None
        assert (snap.owner_kind, snap.owner_id, snap.key) == ("swarm", "s1", "state")
        assert snap.payload == payload and snap.version == 1
        assert snap.updated_at.tzinfo is not None
        assert abs((snap.updated_at - before).total_seconds()) < 60

    async def test_versions_count_writes_and_a_stale_version_conflicts(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            assert await db.put_snapshot("agent", "a1", "mind", {"n": 1}, expected_version=0) == 1
            with pytest.raises(VersionConflict) as created_twice:
                await db.put_snapshot("agent", "a1", "mind", {"n": 9}, expected_version=0)
            assert await db.put_snapshot("agent", "a1", "mind", {"n": 2}, expected_version=1) == 2
            with pytest.raises(VersionConflict) as stale:
                await db.put_snapshot("agent", "a1", "mind", {"n": 9}, expected_version=1)
            with pytest.raises(VersionConflict) as missing:
                await db.put_snapshot("agent", "nobody", "mind", {"n": 9}, expected_version=3)
            assert await db.put_snapshot("agent", "a1", "mind", {"n": 3}) == 3
            with pytest.raises(ValueError, match="expected_version"):
                await db.put_snapshot("agent", "a1", "mind", {"n": 9}, expected_version=-1)
            snap = await db.get_snapshot("agent", "a1", "mind")
        finally:
            await db.close()
        assert (created_twice.value.expected, created_twice.value.actual) == (0, 1)
        assert (stale.value.expected, stale.value.actual) == (1, 2)
        assert (stale.value.owner_kind, stale.value.owner_id, stale.value.key) == (
            "agent",
            "a1",
            "mind",
        )
        assert (missing.value.expected, missing.value.actual) == (3, 0)
        assert snap is not None and snap.payload == {"n": 3} and snap.version == 3

    async def test_of_two_racing_writers_exactly_one_wins(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            await db.put_snapshot("region", "r1", "state", {"by": "first"})
            results = await asyncio.gather(
                *(
                    db.put_snapshot("region", "r1", "state", {"by": who}, expected_version=1)
                    for who in ("a", "b")
                ),
                return_exceptions=True,
            )
            snap = await db.get_snapshot("region", "r1", "state")
        finally:
            await db.close()
        assert sorted(type(r).__name__ for r in results) == ["VersionConflict", "int"]
        winner = "a" if results[0] == 2 else "b"
        assert snap is not None and snap.version == 2 and snap.payload == {"by": winner}

    async def test_list_snapshots_of_an_owner_kind_or_one_owner(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            await db.put_snapshot("region", "r2", "state", {"i": 3})
            await db.put_snapshot("region", "r1", "z", {"i": 2})
            await db.put_snapshot("region", "r1", "a", {"i": 1})
            await db.put_snapshot("swarm", "r1", "a", {"i": 0})
            every = await db.list_snapshots("region")
            one = await db.list_snapshots("region", "r1")
        finally:
            await db.close()
        assert [s.payload["i"] for s in every] == [1, 2, 3]
        assert [(s.owner_id, s.key) for s in one] == [("r1", "a"), ("r1", "z")]

    async def test_compacting_drops_old_entries_and_indexes_keep_growing(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            for i in range(1, 6):
                await db.append("journal", 0, {"i": i})
            await db.append("other", 0, {"i": 0})
            dropped = await db.compact("journal", 5)
            left = [e.index for e in await db.read("journal")]
            after = await db.append("journal", 0, {"i": 6})
            other = [e.index for e in await db.read("other")]
        finally:
            await db.close()
        assert dropped == 4 and left == [5] and after == 6 and other == [1]

    async def test_log_appends_in_order_per_stream(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            assert await db.last_index("mesh") == 0
            indexes = [await db.append("mesh", 1, {"op": f"set{i}"}) for i in range(1, 4)]
            other = await db.append("other", 5, {"op": "x"})
            indexes.append(await db.append("mesh", 2, {"op": "set4"}))
            everything = await db.read("mesh")
            tail = await db.read("mesh", from_index=3)
            page = await db.read("mesh", from_index=2, limit=2)
            last = await db.last_index("mesh")
        finally:
            await db.close()
        assert indexes == [1, 2, 3, 4] and other == 1
        assert [(e.index, e.term, e.payload["op"]) for e in everything] == [
            (1, 1, "set1"),
            (2, 1, "set2"),
            (3, 1, "set3"),
            (4, 2, "set4"),
        ]
        assert all(e.stream == "mesh" for e in everything)
        assert [e.index for e in tail] == [3, 4]
        assert [e.index for e in page] == [2, 3]
        assert last == 4

    async def test_a_log_index_is_taken_once(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            await db.append("mesh", 1, {"op": "first"})
            with pytest.raises(QueryFailed):
                async with db.session() as session:
                    session.add(LogEntryRow(stream="mesh", index=1, term=2, payload={"op": "dup"}))
            entries = await db.read("mesh")
        finally:
            await db.close()
        assert [(e.index, e.payload) for e in entries] == [(1, {"op": "first"})]

    async def test_a_failed_transaction_leaves_nothing_behind(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            with pytest.raises(RuntimeError):
                async with db.session() as session:
                    await store.models.put_snapshot(session, "region", "r1", "s", {"a": 1})
                    await store.models.append(session, "mesh", 1, {"a": 1})
                    raise RuntimeError("boom")
            async with db.session() as session:
                await store.models.put_snapshot(session, "region", "r1", "s", {"a": 2})
                index = await store.models.append(session, "mesh", 1, {"a": 2})
            snap = await db.get_snapshot("region", "r1", "s")
            rows = await db.read("mesh")
        finally:
            await db.close()
        assert snap is not None and snap.version == 1 and snap.payload == {"a": 2}
        assert index == 1 and len(rows) == 1

    async def test_a_restart_resumes_where_it_stopped(self, db_url: str) -> None:
        db = await _open(db_url)
        await db.put_snapshot("region", "r1", "state", {"tick": 41})
        await db.append("mesh", 3, {"op": "a"})
        await db.append("mesh", 3, {"op": "b"})
        await db.close()

        db = await _open(db_url)
        try:
            snap = await db.get_snapshot("region", "r1", "state")
            assert snap is not None
            version = await db.put_snapshot(
                "region", "r1", "state", {"tick": 42}, expected_version=snap.version
            )
            index = await db.append("mesh", 4, {"op": "c"})
            log = await db.read("mesh")
        finally:
            await db.close()
        assert snap.payload == {"tick": 41}
        assert version == 2 and index == 3
        assert [(e.term, e.payload["op"]) for e in log] == [(3, "a"), (3, "b"), (4, "c")]


class TestSqlite(StoreContract):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path / 'mv.db'}"

    async def test_sqlite_runs_in_wal_mode_with_foreign_keys(self, db_url: str) -> None:
        db = await _open(db_url)
        try:
            async with db.engine.connect() as conn:
                journal = await conn.scalar(text("PRAGMA journal_mode"))
                fks = await conn.scalar(text("PRAGMA foreign_keys"))
        finally:
            await db.close()
        assert (journal, fks) == ("wal", 1)


async def test_the_default_is_a_sqlite_file_under_dot_mapleverse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAPLEVERSE_STORE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    db = await open_store(load_settings(StoreSettings))
    try:
        async with db.session() as session:
            assert await session.scalar(select(1)) == 1
    finally:
        await db.close()
    assert (tmp_path / ".mapleverse" / "mapleverse.db").is_file()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_STORE_URL", "postgresql+psycopg://mv:pw@db:5432/mv")
    monkeypatch.setenv("MAPLEVERSE_STORE_ECHO", "true")
    settings = load_settings(StoreSettings)
    assert settings.url == "postgresql+psycopg://mv:pw@db:5432/mv" and settings.echo is True


@pytest.mark.parametrize(
    ("var", "value"),
    [("MAPLEVERSE_STORE_URL", "mysql://x/y"), ("MAPLEVERSE_STORE_ECHO", "maybe")],
)
def test_a_bad_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings(StoreSettings)


async def test_an_unopenable_sqlite_file_is_reported_with_its_url(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    url = f"sqlite+aiosqlite:///{tmp_path / 'file' / 'mv.db'}"
    with pytest.raises(StoreUnavailable) as info:
        await _open(url)
    assert info.value.url == url and str(tmp_path) in str(info.value)
    assert info.value.__cause__ is not None


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'mv.db'}"
    db = await _open(url)
    async with db.session() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    await db.close()
    with pytest.raises(MigrationFailed, match="from-the-future") as info:
        await _open(url)
    assert info.value.url == url


def test_the_public_api_is_sorted_and_complete() -> None:
    assert store.__all__ == sorted(store.__all__)
    assert all(hasattr(store, name) for name in store.__all__)
