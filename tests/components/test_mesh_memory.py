"""A mesh over the in-memory broker: three managers elect a leader over the bus, workers join,
their state is replicated, committed and persisted; the leader dies and nothing is lost.

Each component runs as a task, as `mapleverse component` would run it; storage is one SQLite
file per test, shared by the managers as it is under `mapleverse up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from helpers import next_matching
from meshes import MANAGERS, leader_of, manager, mesh, worker
from worlds import TIMEOUT

from components.mesh_manager import MeshManager
from components.mesh_manager.store import FencedStore
from components.mesh_worker import MeshClient, MeshRequestError, MeshWorker
from mesh import AppendResponse, Role
from mesh.payloads import RaftPacket
from store import StoreSettings, open_store


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/mesh.db"


async def test_managers_elect_one_leader_and_announce_it_retained(
    root: str, store_url: str
) -> None:
    async with mesh(root, store_url) as w:
        leader = await leader_of(w)
        op = w.operator
        sub = await op.subscribe(op.topics["mesh.leader"].build(mesh="alpha"))
        record = (
            await next_matching(sub, lambda m: m.payload.leader == leader.id, TIMEOUT)
        ).payload
        assert record.term == leader.node.term and record.mesh == "alpha"  # type: ignore[union-attr]
        followers = [c for c in w.components.values() if c is not leader]
        assert all(c.role is Role.FOLLOWER for c in followers)
        # the record is out once a majority answered; the last follower hears within a beat
        deadline = time.monotonic() + TIMEOUT
        while {c.node.leader_id for c in followers} != {leader.id}:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, [c.node.leader_id for c in followers]  # type: ignore[union-attr]
            await asyncio.sleep(0.02)


async def test_a_worker_joins_updates_and_a_stale_update_gets_a_clear_refusal(
    root: str, store_url: str
) -> None:
    async with mesh(root, store_url) as w:
        await w.start("w1", worker(w, "w1", mesh_worker_agents=2, mesh_worker_update_interval=0))
        w1 = w.components["w1"]
        assert isinstance(w1, MeshWorker)
        await asyncio.wait_for(w1.joined.wait(), TIMEOUT)
        assert set(w1.agents) == {"w1-a1", "w1-a2"}
        client = MeshClient(w.operator, "alpha", "w1")
        ok = await client.call("update", agent="w1-a1", base=1, patch={"x": 3})
        assert ok == {"ok": True, "version": 2}
        stale = await client.call("update", agent="w1-a1", base=1, patch={"x": 4})
        assert not stale["ok"]
        assert stale["error"] == (
            "stale update: agent 'w1-a1' is at version 2, the update is based on version 1"
        )
        agents = (await client.call("agents", agent="w1-a1"))["agents"]
        assert agents["w1-a1"]["state"] == {"counter": 0, "x": 3}  # the stale one changed nothing
        other = MeshClient(w.operator, "alpha", "intruder")
        refused = await other.call("update", agent="w1-a1", base=2, patch={"x": 5})
        assert refused == {"ok": False, "error": "worker 'intruder' has not joined mesh 'alpha'"}
        # every manager applies the same log (a follower learns of a commit within a beat)
        deadline = time.monotonic() + TIMEOUT
        while True:
            states = [w.components[m].state.dump()["agents"] for m in MANAGERS]  # type: ignore[attr-defined]
            if states[0] == states[1] == states[2]:
                break
            assert time.monotonic() < deadline, states
            await asyncio.sleep(0.02)
        assert states[0]["w1-a1"]["state"] == {"counter": 0, "x": 3}


async def test_the_leader_dies_and_nothing_committed_is_lost(root: str, store_url: str) -> None:
    async with mesh(root, store_url) as w:
        await w.start("w1", worker(w, "w1", mesh_worker_update_interval=0))
        client = MeshClient(w.operator, "alpha", "w1")
        await asyncio.wait_for(w.components["w1"].joined.wait(), TIMEOUT)  # type: ignore[attr-defined]
        version = 1
        for n in range(20):
            result = await client.call("update", agent="w1-a1", base=version, patch={"n": n})
            assert result["ok"], result
            version = result["version"]
        old = await leader_of(w)
        old_term = old.node.term  # type: ignore[union-attr]
        await w.stop(old.id)  # the leader goes away in the middle of the work
        new = await leader_of(w, not_=old.id)
        assert new.node.term > old_term  # type: ignore[union-attr]
        for n in range(20, 30):
            result = await client.call("update", agent="w1-a1", base=version, patch={"n": n})
            assert result["ok"], result
            version = result["version"]
        agents = (await client.call("agents", agent="w1-a1"))["agents"]
        assert agents["w1-a1"] == {"worker": "w1", "version": 31, "state": {"counter": 0, "n": 29}}
        # the old leader comes back from its store and catches up as a follower
        await w.start(old.id, manager(w, old.id, store_url))
        back = w.components[old.id]
        assert isinstance(back, MeshManager)
        deadline = time.monotonic() + TIMEOUT
        while back.state.agents.get("w1-a1", {}).get("version") != 31:
            assert time.monotonic() < deadline, back.state.dump()
            await asyncio.sleep(0.05)
        assert back.role is Role.FOLLOWER


async def test_a_restarted_worker_gets_its_state_back(root: str, store_url: str) -> None:
    async with mesh(root, store_url) as w:
        await w.start("w1", worker(w, "w1", mesh_worker_update_interval=0))
        w1 = w.components["w1"]
        assert isinstance(w1, MeshWorker)
        await asyncio.wait_for(w1.joined.wait(), TIMEOUT)
        client = MeshClient(w.operator, "alpha", "w1")
        assert await w1.update(client, "w1-a1", {"home": "harbour"})
        await w.stop("w1")
        await w.start("w1", worker(w, "w1", mesh_worker_update_interval=0))
        again = w.components["w1"]
        assert isinstance(again, MeshWorker)
        await asyncio.wait_for(again.joined.wait(), TIMEOUT)
        expected = {"worker": "w1", "version": 2, "state": {"counter": 0, "home": "harbour"}}
        assert again.agents == {"w1-a1": expected}


async def test_a_silent_worker_is_marked_failed_then_removed(root: str, store_url: str) -> None:
    async with mesh(root, store_url) as w:
        await w.start("w9", worker(w, "w9", mesh_worker_update_interval=0))
        await asyncio.wait_for(w.components["w9"].joined.wait(), TIMEOUT)  # type: ignore[attr-defined]
        op = w.operator
        health = await op.subscribe(
            op.topics["mesh.agent.health"].build(mesh="alpha", agent="w9-a1")
        )
        w.components["w9"].bus.abort()  # type: ignore[attr-defined]
        await w.stop("w9")
        seen = []
        msg = await next_matching(
            health,
            lambda m: seen.append(m.payload.health) or m.payload.health == "removed",
            TIMEOUT,
        )
        assert "failed" in seen and msg.payload.worker == "w9"
        leader = await leader_of(w)
        assert "w9" not in leader.state.workers and "w9-a1" not in leader.state.agents


async def test_a_deposed_leaders_writes_are_refused_by_the_fence(root: str, store_url: str) -> None:
    async with mesh(root, store_url) as w:
        old = await leader_of(w)
        old_term = old.node.term  # type: ignore[union-attr]
        assert await old.write_state(old_term)
        await w.stop(old.id)
        new = await leader_of(w, not_=old.id)
        new_term = new.node.term  # type: ignore[union-attr]
        deadline = time.monotonic() + TIMEOUT
        db = await open_store(StoreSettings(url=store_url))
        try:
            fenced = FencedStore(db)
            while await fenced.highest_token("alpha") < new_term:  # the new leader wrote
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await w.start(old.id, manager(w, old.id, store_url))
            back = w.components[old.id]
            assert isinstance(back, MeshManager)
            assert not await back.write_state(old_term)  # as a paused leader waking would
            assert back.fenced_refusals == 1
            record = await fenced.read("alpha", "state")
            assert record is not None and record.token == new_term
        finally:
            await db.close()


async def test_a_follower_that_was_away_catches_up_on_large_entries(
    root: str, store_url: str
) -> None:
    """Catching up sends batches that fit the packet limit, however large the entries."""
    async with mesh(root, store_url) as w:
        leader = await leader_of(w)
        away = next(m for m in MANAGERS if m != leader.id)
        await w.stop(away)
        client = MeshClient(w.operator, "alpha", "w1")
        assert (await client.call("join"))["ok"]
        assert (await client.call("add-agent", agent="big", state={}))["ok"]
        version = 1
        for n in range(70):  # ~2 KB each: 64 of them are more than one packet
            result = await client.call(
                "update", agent="big", base=version, patch={"blob": "x" * 2000, "n": n}
            )
            assert result["ok"], result
            version = result["version"]
        with pytest.raises(MeshRequestError, match="bytes; at most 16384 fit"):
            await client.call("update", agent="big", base=version, patch={"blob": "x" * 20000})
        await w.start(away, manager(w, away, store_url))
        back = w.components[away]
        assert isinstance(back, MeshManager)
        deadline = time.monotonic() + TIMEOUT
        while back.state.agents.get("big", {}).get("version") != version:
            assert time.monotonic() < deadline, back.state.agents.get("big")
            await asyncio.sleep(0.05)
        await client.close()


async def test_a_leader_without_a_majority_stops_speaking_as_leader(
    root: str, store_url: str
) -> None:
    """No answer from a majority within the shortest election timeout: another leader may
    exist, so the old one publishes no status, topology or health, and answers no `status`."""
    async with mesh(root, store_url) as w:
        leader = await leader_of(w)
        deadline = time.monotonic() + TIMEOUT
        while not leader.has_lease():  # from the first answers to its first heartbeats
            assert time.monotonic() < deadline, "the leader never got a majority's answers"
            await asyncio.sleep(0.02)
        op = w.operator
        status = await op.subscribe(op.topics["mesh.status"].build(mesh="alpha"))
        await next_matching(status, lambda m: m.payload.leader == leader.id, TIMEOUT)
        for other in [m for m in MANAGERS if m != leader.id]:
            await w.stop(other)
        lost = time.monotonic()
        while leader.has_lease():
            assert time.monotonic() - lost < TIMEOUT
            await asyncio.sleep(0.02)
        assert leader.role is Role.LEADER  # it still thinks it leads: nobody told it otherwise
        # Answers read only now, as after a pause (they waited in its socket), answered what it
        # sent before the others went: they prove nothing about now, and renew no lease.
        node = leader.node
        assert node is not None
        raft = op.topics["mesh.raft"].build(mesh="alpha", node=leader.id)
        for other in [m for m in MANAGERS if m != leader.id]:
            late = AppendResponse(
                term=node.term, follower=other, success=True, match_index=node.commit_index
            )
            await op.publish(raft, RaftPacket(to=leader.id, message=late.to_dict(), answers=lost))
        await asyncio.sleep(0.1)
        assert not leader.has_lease()
        await asyncio.sleep(0.05)  # a status already on its way may still arrive
        with contextlib.suppress(TimeoutError):
            while True:
                await status.get(0)
        with pytest.raises(TimeoutError):  # several status intervals (0.2 s) without one
            await status.get(1.0)


async def test_a_restarted_manager_resumes_from_its_snapshot(root: str, store_url: str) -> None:
    async with mesh(root, store_url, mesh_snapshot_every=10) as w:
        client = MeshClient(w.operator, "alpha", "w1")
        assert (await client.call("join"))["ok"]
        assert (await client.call("add-agent", agent="a", state={}))["ok"]
        version = 1
        for n in range(25):
            result = await client.call("update", agent="a", base=version, patch={"n": n})
            version = result["version"]
        leader = await leader_of(w)
        follower = next(m for m in MANAGERS if m != leader.id)
        db = await open_store(StoreSettings(url=store_url))
        try:
            deadline = time.monotonic() + TIMEOUT
            while (
                snap := await db.get_snapshot("raft-state", f"alpha/{follower}", "state")
            ) is None or snap.payload["applied"] < 20:
                assert time.monotonic() < deadline, "no snapshot of 20 entries or more"
                await asyncio.sleep(0.05)
        finally:
            await db.close()
        assert snap.payload["agents"]["a"]["version"] > 10  # it holds most of the updates
        for name in MANAGERS:  # all down: alone, a restarted one hears of no commit
            await w.stop(name)
        await w.start(follower, manager(w, follower, store_url))
        back = w.components[follower]
        assert isinstance(back, MeshManager)
        assert back.state.applied >= snap.payload["applied"]  # from its snapshot alone
        assert back.state.agents["a"] == snap.payload["agents"]["a"]
        for name in MANAGERS:
            if name != follower:
                await w.start(name, manager(w, name, store_url))
        while back.state.agents["a"]["version"] != version:  # and the rest from the log
            assert time.monotonic() < deadline + TIMEOUT, back.state.agents["a"]
            await asyncio.sleep(0.05)
        assert back.state.agents["a"]["state"] == {"n": 24}
        await client.close()
