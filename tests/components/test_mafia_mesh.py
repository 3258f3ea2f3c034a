"""The Mafia game on a mesh (in-memory broker): its state in the replicated log, the leader as
game master, bots and a person playing, bad input refused, the leader killed mid-game."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import next_matching
from meshes import MANAGERS, leader_of, mesh, worker
from worlds import TIMEOUT

from bus import Bus, BusSettings
from bus.payloads import RpcRequest
from components.mesh_manager import MeshManager
from components.mesh_worker import MeshWorker
from mafia import Game, Phase
from mesh.payloads import GameAction


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/mesh.db"


async def call(bus: Bus, method: str, **args: Any) -> Any:
    topic = bus.topics["rpc.request"].build(service="mesh-alpha", method=method)
    deadline = time.monotonic() + TIMEOUT
    while True:  # only the leader answers: ask again until one does
        try:
            reply = await bus.request(topic, RpcRequest(args=args), timeout=0.5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            continue
        assert reply.payload.ok, reply.payload.error
        return reply.payload.result


async def test_a_game_of_bots_plays_to_its_end_and_tells_its_story(
    root: str, store_url: str
) -> None:
    async with mesh(root, store_url) as w:
        op = w.operator
        await leader_of(w)
        events = await op.subscribe(op.topics["mafia.events"].build(mesh="alpha", game="g1"))
        started = await call(
            op, "mafia-start", game="g1", players=12, seed=7, day_seconds=5, night_seconds=5
        )
        assert started["ok"] and len(started["bots"]) == 12
        won = await next_matching(events, lambda m: m.payload.kind == "won", 30)
        assert "wins" in won.payload.line
        story = await call(op, "mafia-story", game="g1")
        assert story["phase"] == "over" and story["winner"] in {"town", "mafia"}
        assert story["story"][0].startswith("12 players sit down")
        assert any("wins after" in line for line in story["story"])
        # every manager holds the same finished game, from the log (within a beat)
        deadline = time.monotonic() + TIMEOUT
        while True:
            games = [w.components[m].state.games.get("g1", {}).get("rules") for m in MANAGERS]  # type: ignore[attr-defined]
            if games[0] == games[1] == games[2]:
                break
            assert time.monotonic() < deadline, [g and g["phase"] for g in games]
            await asyncio.sleep(0.02)
        assert games[0] is not None and games[0]["phase"] == "over"


async def test_a_person_plays_sees_only_their_role_and_bad_input_changes_nothing(
    root: str, store_url: str
) -> None:
    async with mesh(root, store_url) as w:
        op = w.operator
        await leader_of(w)
        started = await call(
            op, "mafia-start", game="g2", players=12, humans=["pat"], seed=3,
            day_seconds=30, night_seconds=30,
        )  # fmt: skip
        assert started["players"][0] == "pat"
        # pat reads its own view (that no one else can is the ACL's: tests/broker/test_access.py)
        pat = Bus(
            BusSettings(client_id="pat", username="pat", root=root),
            transport=w.broker.transport(),
        )
        async with pat:
            view_topic = pat.topics["mafia.player"].build(mesh="alpha", game="g2", agent="pat")
            views = await pat.subscribe(view_topic)
            first = (
                await next_matching(views, lambda m: m.payload.role is not None, TIMEOUT)
            ).payload
            assert first.player == "pat" and first.role in {
                "mafia",
                "detective",
                "doctor",
                "villager",
            }
            leader = await leader_of(w)
            before = leader.state.games["g2"]["rules"]
            act = pat.topics["mafia.act"].build(mesh="alpha", game="g2", agent="pat")
            # it is night: a vote is out of phase, and nobody may act as someone else
            await pat.publish(act, GameAction(op="vote", target="bob"))
            reply = (
                await next_matching(views, lambda m: m.payload.reply is not None, TIMEOUT)
            ).payload
            assert reply.reply == {"ok": False, "op": "vote", "error": reply.reply["error"]}
            assert "night" in reply.reply["error"] or "day" in reply.reply["error"]
            await pat.publish(act, GameAction(op="say", text="hi", player="bob"))
            reply = (
                await next_matching(
                    views, lambda m: "cannot act as" in str(m.payload.reply), TIMEOUT
                )
            ).payload
            assert reply.reply["error"] == "you are 'pat'; you cannot act as 'bob'"
            after = leader.state.games["g2"]["rules"]
            assert after["votes"] == before["votes"] and after["events"] == before["events"]


async def test_the_leader_killed_mid_game_and_the_game_goes_on(root: str, store_url: str) -> None:
    async with mesh(root, store_url) as w:
        op = w.operator
        await leader_of(w)
        state = await op.subscribe(op.topics["mafia.state"].build(mesh="alpha", game="g3"))
        await call(
            op, "mafia-start", game="g3", players=12, seed=11, day_seconds=0.3, night_seconds=0.3
        )
        await next_matching(state, lambda m: m.payload.round >= 2, TIMEOUT)
        old = await leader_of(w)
        seen = old.state.games["g3"]["rules"]["events"]
        await w.stop(old.id)
        new = await leader_of(w, not_=old.id)
        assert isinstance(new, MeshManager)
        over = await next_matching(state, lambda m: m.payload.phase == "over", 30)
        assert over.payload.winner in {"town", "mafia"}
        final = Game.from_dict(new.state.games["g3"]["rules"])
        assert final.phase is Phase.OVER
        assert [e.to_dict() for e in final.events[: len(seen)]] == seen  # nothing lost


async def test_bots_hosted_by_a_worker_are_its_agents_and_it_plays_them(
    root: str, store_url: str
) -> None:
    async with mesh(root, store_url) as w:
        op = w.operator
        await leader_of(w)
        await w.start("w1", worker(w, "w1", mesh_worker_agents=0, mesh_worker_update_interval=0))
        w1 = w.components["w1"]
        assert isinstance(w1, MeshWorker)
        await asyncio.wait_for(w1.joined.wait(), TIMEOUT)
        events = await op.subscribe(op.topics["mafia.events"].build(mesh="alpha", game="g4"))
        started = await call(
            op, "mafia-start", game="g4", players=12, seed=5, host="w1",
            day_seconds=5, night_seconds=5,
        )  # fmt: skip
        assert started["host"] == "w1"
        leader = await leader_of(w)
        assert set(leader.state.workers["w1"]) == {f"g4-{b}" for b in started["bots"]}
        won = await next_matching(events, lambda m: m.payload.kind == "won", 30)
        assert "wins" in won.payload.line
        assert w1.players.actions >= 12  # the worker played them, through the act topics
        assert leader.games.playing == []  # and the leader did not
