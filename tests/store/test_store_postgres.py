"""The store contract (tests/store/test_store_sqlite.py) on the local PostgreSQL server.

Each test gets a database of its own (`mv_<uuid8>`, dropped after). The server is expected at
127.0.0.1:5432 with trust auth for `postgres`; when it is unreachable the tests skip, or fail
when CI=true.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from store import StoreSettings, StoreUnavailable, open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))  # any import mode finds the contract
from test_store_sqlite import StoreContract

SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


def _server_or_skip() -> psycopg.Connection:
    try:
        return psycopg.connect(SERVER, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at 127.0.0.1:5432 unreachable: {str(exc).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.postgres
class TestPostgres(StoreContract):
    @pytest.fixture
    def db_url(self) -> Iterator[str]:
        name = f"mv_{uuid.uuid4().hex[:8]}"
        with _server_or_skip() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            with _server_or_skip() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    async def test_payloads_are_stored_as_jsonb(self, db_url: str) -> None:
        db = await open_store(StoreSettings(url=db_url))
        try:
            async with db.engine.connect() as conn:
                kind = await conn.scalar(
                    text(
                        "SELECT data_type FROM information_schema.columns "
                        "WHERE table_name = 'snapshots' AND column_name = 'payload'"
                    )
                )
        finally:
            await db.close()
        assert kind == "jsonb"


async def test_an_unreachable_server_is_reported_without_its_password() -> None:
    url = "postgresql+psycopg://mv:s3cret@127.0.0.1:1/mv"
    with pytest.raises(StoreUnavailable) as info:
        await open_store(StoreSettings(url=url))
    assert "s3cret" not in str(info.value) and "s3cret" not in info.value.url
    assert info.value.url == "postgresql+psycopg://mv:***@127.0.0.1:1/mv"
    assert "127.0.0.1:1" in str(info.value)
