"""A restart of every world component resumes from what it persisted, on SQLite and PostgreSQL.

The world runs, a swarm grows and an agent claims a building; then every component stops and
the broker itself is replaced by a fresh one (so nothing retained survives): the new processes
must bring the world back from storage alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import next_matching
from psycopg import sql
from worlds import TIMEOUT, small_world, snapshot_where

from bus import MemoryBroker


def _postgres_url() -> Iterator[str]:
    server = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
    try:
        admin = psycopg.connect(server, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at 127.0.0.1:5432 unreachable: {str(exc).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"mv_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/world.db"
    else:
        yield from _postgres_url()


async def test_the_world_comes_back_from_storage_after_everything_restarts(
    root: str, store_url: str
) -> None:
    async with small_world(root, store_url, scheduler=False) as world:
        assert (await world.call("swarm", "create", name="ants", behaviour="drift", size=150)).ok
        op = world.operator
        status = await op.subscribe(op.topics["swarm.status"].build(swarm="ants"))
        await next_matching(status, lambda m: m.payload.agents == 150, TIMEOUT)
        assert (await world.call("swarm", "pause", name="ants")).ok
        assert (await world.call("world-main", "tick-rate", rate=40)).ok
        before = await snapshot_where(world, lambda s: s.tick > 20 and s.target_rate == 40)
        regions = (await world.call("world-main", "status")).result["regions"]
        reply = await world.call(
            "world-main", "region-drain", region=regions[0]["id"], target=regions[1]["id"]
        )
        assert reply.ok, reply.error
    # a new broker: nothing retained, no sessions; only the store remembers
    async with small_world(root, store_url, scheduler=False, broker=MemoryBroker()) as world:
        after = await snapshot_where(world, lambda s: s.entities == 150)
        assert after.tick >= before.tick, "the clock started over"
        assert after.target_rate == 40
        assert {r.district for r in after.regions} == {regions[1]["district"]}  # drained
        assert after.version > before.version
        status = (await world.call("swarm", "status", name="ants")).result
        assert status["agents"] == 150 and status["state"] == "paused"
        assert status["behaviour"] == "drift"
