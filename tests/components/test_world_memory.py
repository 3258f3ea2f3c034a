"""A whole small world over the in-memory broker: orchestrator, two district servers, swarms.

Each component runs as a task, as `mapleverse component` would run it; an operator talks to
them over request/reply exactly as the CLI does. Storage is a SQLite file per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import next_matching
from worlds import TIMEOUT, World, small_world, snapshot_where

from bus import Bus, BusSettings
from bus.payloads import Action, AgentState, Observation

EXAMPLES = str(Path(__file__).resolve().parents[2] / "docs" / "examples")


@pytest.fixture
async def world(root: str, tmp_path: Path) -> AsyncIterator[World]:
    async with small_world(root, f"sqlite+aiosqlite:///{tmp_path}/world.db") as w:
        yield w


async def test_a_created_swarm_reaches_its_size_across_both_districts(world: World) -> None:
    reply = await world.call("swarm", "create", name="birds", behaviour="flocking", size=300)
    assert reply.ok, reply.error
    op = world.operator
    progress = await op.subscribe(op.topics["swarm.progress"].build(swarm="birds"))
    status = await world.call("swarm", "status", name="birds")
    if status.result["agents"] != 300:
        await next_matching(progress, lambda m: m.payload.finished, TIMEOUT)
    status_topic = op.topics["swarm.status"].build(swarm="birds")
    await next_matching(await op.subscribe(status_topic), lambda m: m.payload.agents == 300)
    snap = await snapshot_where(world, lambda s: s.entities >= 300)
    counts = {r.id: r.entities for r in snap.regions}
    assert all(n > 50 for n in counts.values()), counts
    status = (await world.call("swarm", "status", name="birds")).result
    assert status["agents"] == 300 and set(status["districts"]) == {"d1", "d2"}


async def test_a_region_snapshot_holds_every_entity_of_its_region_in_parts(
    world: World,
) -> None:
    """A late joiner reads a region whole from its retained parts (`.../snapshot/+`)."""
    assert (await world.call("swarm", "create", name="gnats", behaviour="drift", size=1200)).ok
    snap = await snapshot_where(world, lambda s: s.entities >= 1200)
    region = max(snap.regions, key=lambda r: r.entities)
    op = world.operator
    pattern = op.topics["region.snapshot"].build(world="main", region=region.id, part="+")
    sub = await op.subscribe(pattern)
    by_tick: dict[int, dict[int, Any]] = {}
    try:  # the parts of one snapshot share its tick; wait until one tick has all of them
        while True:
            msg = await sub.get(TIMEOUT)
            part = msg.payload
            got = by_tick.setdefault(part.tick, {})
            got[part.part] = part
            if len(got) == part.parts:
                break
    finally:
        await sub.close()
    parts = [got[i] for i in range(len(got))]
    assert len(parts) >= 2  # more than SNAPSHOT_PART entities: it really is split
    ids = [i for p in parts for i in p.entities.id]
    assert len(ids) == len(set(ids)) == parts[0].total
    assert {p.region for p in parts} == {region.id} and {p.parts for p in parts} == {len(parts)}
    b = parts[0].bounds
    xs = [x for p in parts for x in p.entities.x]
    ys = [y for p in parts for y in p.entities.y]
    assert all(b.x0 <= x <= b.x1 for x in xs) and all(b.y0 <= y <= b.y1 for y in ys)
    swarms = [s for p in parts for s in p.entities.swarm]
    gnats = [i for i, s in zip(ids, swarms, strict=True) if s == "gnats"]
    assert len(gnats) > 500 and all(i.startswith("gnats") for i in gnats)


async def test_unknown_swarm_and_region_get_clear_errors(world: World) -> None:
    reply = await world.call("swarm", "scale", name="nope", target=3)
    assert not reply.ok and "unknown swarm 'nope'" in reply.error
    reply = await world.call("world-main", "region-show", region="atlantis")
    assert not reply.ok and "unknown region 'atlantis'" in reply.error
    reply = await world.call("swarm", "create", name="x", behaviour="teleport", size=1)
    assert not reply.ok and "unknown behaviour 'teleport'" in reply.error


async def test_pause_stops_the_clock_and_resume_restarts_it(world: World) -> None:
    await snapshot_where(world, lambda s: s.tick > 3)
    assert (await world.call("world-main", "pause")).ok
    paused = await snapshot_where(world, lambda s: s.paused)
    await asyncio.sleep(0.3)
    still = (await world.call("world-main", "status")).result
    assert still["tick"] == paused.tick
    assert (await world.call("world-main", "resume")).ok
    await snapshot_where(world, lambda s: not s.paused and s.tick > paused.tick + 3)


async def test_draining_a_region_moves_every_entity_to_the_target_server(world: World) -> None:
    assert (await world.call("swarm", "create", name="ants", behaviour="drift", size=200)).ok
    before = await snapshot_where(world, lambda s: s.entities >= 200)
    total = before.entities
    regions = (await world.call("world-main", "status")).result["regions"]
    left = next(r for r in regions if r["district"] == "d1")
    right = next(r for r in regions if r["district"] == "d2")
    reply = await world.call("world-main", "region-drain", region=left["id"], target=right["id"])
    assert reply.ok, reply.error
    await snapshot_where(
        world, lambda s: s.districts.get("d1", 0) == 0 and s.districts.get("d2") == total
    )


async def agent_bus(world: World, agent: str) -> Bus:
    bus = Bus(
        BusSettings(client_id=agent, root=world.root, reconnect_min=0.01, reconnect_max=0.05),
        kind="agent",
        transport=world.broker.transport(),
    )
    await bus.start()
    return bus


async def test_an_agent_that_says_ready_is_observed_and_its_moves_move_it(world: World) -> None:
    agent = await agent_bus(world, "scout")
    try:
        t = agent.topics
        obs = await agent.subscribe(t["agent.obs"].build(agent="scout"))
        errors = await agent.subscribe(t["agent.error"].build(agent="scout"))
        await agent.publish(t["agent.state"].build(agent="scout"), AgentState(status="ready"))
        first = await next_matching(obs, lambda m: m.payload.location is not None, TIMEOUT)
        o: Observation = first.payload
        assert o.agent == "scout" and "move" in o.actions and o.deadline == 0.4
        assert o.location is not None and o.location.region and o.location.district in ("d1", "d2")
        start = (o.location.x, o.location.y)
        for _ in range(5):  # east, at full speed, for five observations
            act = Action(action="move", tick=o.tick, params={"dx": 1, "dy": 0, "speed": 5})
            await agent.publish(t["agent.act"].build(agent="scout"), act)
            o = (await obs.get(timeout=TIMEOUT)).payload
        assert o.location is not None and o.location.x > start[0] + 1.0
        assert abs(o.location.y - start[1]) < 0.01
        assert o.memory["recent"][-1]["action"] == "move"
        # observations skipped above (no location yet) may have expired; none answered did
        while not errors.queue.empty():
            assert (await errors.get()).payload.tick < first.payload.tick
        # the hosted wanderers are in the world too, and the scout can be seen by them
        hosted = await world.operator.subscribe(t["agent.act"].build(agent="wanderer-1"))
        assert (await hosted.get(timeout=TIMEOUT)).payload.action in ("move", "say")
    finally:
        await agent.close()


async def test_late_impossible_and_malformed_answers_get_an_error_and_the_default(
    world: World,
) -> None:
    agent = await agent_bus(world, "rogue")
    try:
        t = agent.topics
        obs = await agent.subscribe(t["agent.obs"].build(agent="rogue"))
        errors = await agent.subscribe(t["agent.error"].build(agent="rogue"))
        await agent.publish(t["agent.state"].build(agent="rogue"), AgentState(status="ready"))
        o = (await obs.get(timeout=TIMEOUT)).payload
        # impossible: faster than the limit
        fast = Action(action="move", tick=o.tick, params={"dx": 1, "speed": 500})
        await agent.publish(t["agent.act"].build(agent="rogue"), fast)
        e = (await errors.get(timeout=TIMEOUT)).payload
        assert (e.code, e.applied, e.tick) == ("impossible", "wait", o.tick)
        assert "over the limit" in e.reason
        # malformed: not an Action at all (published raw, as a buggy client would)
        o = (await obs.get(timeout=TIMEOUT)).payload
        await agent.publish_bytes(
            str(t["agent.act"].build(agent="rogue")), b'{"acton": 1}', 1, False
        )
        e = (await errors.get(timeout=TIMEOUT)).payload
        assert e.code == "malformed" and e.applied == "wait"
        # late: no answer within the deadline
        o = (await obs.get(timeout=TIMEOUT)).payload
        e = (await errors.get(timeout=TIMEOUT)).payload
        assert (e.code, e.applied, e.tick) == ("late", "wait", o.tick)
        # and an answer after that is late too, and changes nothing
        await agent.publish(t["agent.act"].build(agent="rogue"), Action(action="wait", tick=o.tick))
        e = (await errors.get(timeout=TIMEOUT)).payload
        assert e.code == "late" and e.applied == "none"
    finally:
        await agent.close()


async def test_device_telemetry_becomes_an_entity_and_bad_telemetry_goes_to_the_dlq(
    world: World,
) -> None:
    op = world.operator
    t = op.topics
    dlq = await op.subscribe(t["dlq"].build(kind="+"))
    updates = await op.subscribe(t["region.updates"].build(world="main", region="+"))
    drone = await agent_bus(world, "drone-7")
    try:
        topic = str(t["agent.telemetry"].build(agent="drone-7"))

        async def send(raw: bytes) -> None:
            await drone.publish_bytes(topic, raw, 0, False)

        await send(b'{"x": 150.0, "y": 50.0, "battery": 0.9}')  # in the right-hand region

        def seen_at(x_min: float) -> Any:
            def check(m: Any) -> bool:
                cols = m.payload.columns
                return any(
                    i == "drone-7" and x >= x_min
                    for i, x in zip(cols["id"], cols["x"], strict=True)
                )

            return check

        first = await next_matching(updates, seen_at(149.0), TIMEOUT)
        assert first.params["region"] == "r0-1"  # owned by d2
        await send(b'{"x": 160.0, "y": 50.0, "battery": 0.8}')
        await next_matching(updates, seen_at(159.0), TIMEOUT)
        # bad telemetry: not finite, outside the world, too big: each reported, with why
        await send(b'{"x": NaN, "y": 1.0}')
        await send(b'{"x": 5000.0, "y": 50.0}')
        await send(b'{"x": 150.0, "y": 50.0, "junk": "' + b"z" * 2000 + b'"}')
        reasons: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                reasons.append((await dlq.get(timeout=0.5)).payload.reason)
        assert any(r.startswith("not JSON") for r in reasons), reasons  # every reader says so
        # what only makes no sense in the world is reported by one district server, once
        assert sum("out of bounds" in r for r in reasons) == 1, reasons
        assert sum("oversized" in r for r in reasons) == 1, reasons
        # a district server owns it: its entity is in the retained device directory
        states = await op.subscribe(t["agent.state"].build(agent="drone-7"))
        state = (await states.get(timeout=TIMEOUT)).payload
        assert state.status == "device" and state.data["district"] == "d2"
    finally:
        await drone.close()


async def test_a_swarm_flies_a_custom_behaviour_from_a_plugin(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(EXAMPLES)
    url = f"sqlite+aiosqlite:///{tmp_path}/world.db"
    plugins = "behaviour_plugin:register"
    async with small_world(root, url, scheduler=False, behaviour_plugins=plugins) as world:
        reply = await world.call(
            "swarm", "create", name="moths", behaviour="orbit", size=50,
            bounds=[60, 20, 140, 80], params={"center": [100, 50], "speed": 20},
        )  # fmt: skip
        assert reply.ok, reply.error
        op = world.operator
        sub = await op.subscribe(op.topics["region.updates"].build(world="main", region="+"))

        def radii(m: Any) -> list[float]:
            cols = m.payload.columns
            return [
                ((x - 100) ** 2 + (y - 50) ** 2) ** 0.5
                for x, y, s in zip(cols["x"], cols["y"], cols["swarm"], strict=True)
                if s == "moths"
            ]

        first = await next_matching(sub, lambda m: len(radii(m)) > 5, TIMEOUT)
        cols = first.payload.columns
        speeds = [
            (vx**2 + vy**2) ** 0.5
            for vx, vy, s in zip(cols["vx"], cols["vy"], cols["swarm"], strict=True)
            if s == "moths"
        ]
        assert all(abs(v - 20) < 0.01 for v in speeds), speeds  # they orbit at the set speed
    bad = small_world(root, url, scheduler=False, behaviour_plugins="nowhere:register")
    with pytest.raises(Exception, match="MAPLEVERSE_BEHAVIOUR_PLUGINS: 'nowhere:register'"):
        async with bad:
            pass


async def test_the_world_metrics_are_exported_with_the_seed_names(world: World) -> None:
    from prometheus_client import REGISTRY, generate_latest

    assert (await world.call("swarm", "create", name="gauged", behaviour="drift", size=120)).ok
    op = world.operator
    status = await op.subscribe(op.topics["swarm.status"].build(swarm="gauged"))
    await next_matching(status, lambda m: m.payload.agents == 120, TIMEOUT)
    await next_matching(status, lambda m: True, TIMEOUT)  # one more round: the gauge is set
    text = generate_latest(REGISTRY).decode()
    assert 'mapleverse_swarm_agent_count{swarm="gauged"} 120.0' in text
    for name in (
        'mapleverse_tick_duration_seconds_count{component="district",world="main"}',
        'mapleverse_tick_duration_seconds_count{component="orchestrator",world="main"}',
        "mapleverse_region_sync_lag_seconds{",
        "mapleverse_behavior_execution_errors_total{",
        'mapleverse_handoffs_total{direction="out"',
        'mapleverse_time_dilation{world="main"}',
        'mapleverse_agents_per_district{district="d1",world="main"}',
        "mapleverse_handoff_latency_seconds_bucket{",
        'mapleverse_agent_observations_total{world="main"}',
        'mapleverse_agent_answers_total{outcome="answered",world="main"}',  # hosted agents
    ):
        assert name in text, f"{name} missing from /metrics"


async def test_a_crowded_region_splits_and_its_half_moves_to_the_idle_server(
    root: str, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/world.db"
    async with small_world(root, url, scheduler=False, world_split_above=250) as world:
        reply = await world.call(
            "swarm", "create", name="crowd", behaviour="hold", size=400, bounds=[0, 0, 100, 100]
        )
        assert reply.ok, reply.error
        snap = await snapshot_where(
            world, lambda s: any(r.parent == "r0-0" for r in s.regions) and s.entities == 400
        )
        halves = [r for r in snap.regions if r.parent == "r0-0"]
        assert {r.district for r in halves} == {"d1", "d2"}  # d2 was idle: it takes a half
        assert "r0-0" not in {r.id for r in snap.regions}
        # nothing lost on the way: every member is counted, some now on d2
        settled = await snapshot_where(
            world, lambda s: s.entities == 400 and s.districts.get("d2", 0) > 0
        )
        assert all(r.entities <= 250 for r in settled.regions), settled.regions


async def test_a_gradual_scale_grows_at_its_rate_with_progress_on_the_way(world: World) -> None:
    assert (await world.call("swarm", "create", name="slow", behaviour="hold", size=0)).ok
    op = world.operator
    progress = await op.subscribe(op.topics["swarm.progress"].build(swarm="slow"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await world.call("swarm", "scale", name="slow", target=150, rate=150)
    assert reply.ok, reply.error
    seen: list[int] = []
    while True:
        p = (await progress.get(timeout=TIMEOUT)).payload
        seen.append(p.current)
        if p.finished:
            break
    took = loop.time() - started
    assert p.current == 150 and p.error is None
    assert took >= 0.8, f"150 members at 150/s took only {took:.2f} s"
    assert len({c for c in seen if 0 < c < 150}) >= 3, seen  # it was seen growing
    assert seen == sorted(seen)


async def test_an_agent_that_leaves_and_comes_back_is_in_the_world_again(world: World) -> None:
    agent = await agent_bus(world, "homing")
    try:
        t = agent.topics
        obs = await agent.subscribe(t["agent.obs"].build(agent="homing"))
        state = t["agent.state"].build(agent="homing")
        await agent.publish(state, AgentState(status="ready"))
        await next_matching(obs, lambda m: m.payload.location is not None, TIMEOUT)
        before = await snapshot_where(world, lambda s: s.entities >= 3)  # 2 wanderers + it
        await agent.publish(state, AgentState(status="offline"))
        await snapshot_where(world, lambda s: s.entities == before.entities - 1)
        await agent.publish(state, AgentState(status="ready"))
        back = await next_matching(obs, lambda m: m.payload.location is not None, TIMEOUT)
        assert back.payload.agent == "homing"
        await snapshot_where(world, lambda s: s.entities == before.entities)
    finally:
        await agent.close()


async def test_an_agent_walks_to_a_building_and_claims_it_and_nobody_else_can(
    root: str, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/world.db"
    async with small_world(root, url, scheduler_max_speed=200.0) as world:
        agent = await agent_bus(world, "settler")
        try:
            t = agent.topics
            obs = await agent.subscribe(t["agent.obs"].build(agent="settler"))
            errors = await agent.subscribe(t["agent.error"].build(agent="settler"))
            act = t["agent.act"].build(agent="settler")
            await agent.publish(t["agent.state"].build(agent="settler"), AgentState(status="ready"))
            o = (await next_matching(
                obs, lambda m: m.payload.location is not None
                and m.payload.environment.get("buildings"), TIMEOUT
            )).payload  # fmt: skip
            assert o.memory["home"] == o.location.region  # it lives where it was placed
            target = o.environment["buildings"][0]
            # too far away: impossible, with the reason
            far = Action(action="claim", tick=o.tick, params={"building": target["building"]})
            distance = abs(target["x"] - o.location.x) + abs(target["y"] - o.location.y)
            if distance > 5:
                await agent.publish(act, far)
                e = (await next_matching(errors, lambda m: m.payload.code != "late")).payload
                assert e.code == "impossible" and "stand at" in e.reason
                o = (await obs.get(timeout=TIMEOUT)).payload
            for _ in range(40):  # walk there
                assert o.location is not None
                dx, dy = target["x"] - o.location.x, target["y"] - o.location.y
                if abs(dx) < 1 and abs(dy) < 1:
                    break
                speed = min(200.0, (dx * dx + dy * dy) ** 0.5 / 0.1)  # arrive in one cadence
                step = Action(
                    action="move", tick=o.tick, params={"dx": dx, "dy": dy, "speed": speed}
                )
                await agent.publish(act, step)
                o = (await obs.get(timeout=TIMEOUT)).payload
            claim = Action(action="claim", tick=o.tick, params={"building": target["building"]})
            await agent.publish(act, claim)
            district, hood, name = target["building"].split("/")
            buildings = await world.operator.subscribe(
                t["city.building"].build(world="main", district=district, neighbourhood=hood,
                                         building=name)
            )  # fmt: skip
            owned = await next_matching(buildings, lambda m: m.payload.claimed_by == "settler")
            assert owned.retain or owned.payload.claimed_at
        finally:
            await agent.close()
        rival = await agent_bus(world, "rival")
        try:
            t = rival.topics
            obs = await rival.subscribe(t["agent.obs"].build(agent="rival"))
            errors = await rival.subscribe(t["agent.error"].build(agent="rival"))
            await rival.publish(t["agent.state"].build(agent="rival"), AgentState(status="ready"))
            o = (await obs.get(timeout=TIMEOUT)).payload
            taken = Action(action="claim", tick=o.tick, params={"building": target["building"]})
            await rival.publish(t["agent.act"].build(agent="rival"), taken)
            # (an observation it let expire meanwhile may be reported late first)
            e = (await next_matching(errors, lambda m: m.payload.code != "late")).payload
            assert e.code == "impossible" and "claimed by settler" in e.reason
        finally:
            await rival.close()
