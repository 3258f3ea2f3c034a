"""The world's rules without I/O: clock and time dilation, region changes, swarm arithmetic,
and the hand-off ledger."""

from __future__ import annotations

import pytest

from components.district.handoff import HandoffLedger
from components.orchestrator.clock import Clock
from components.orchestrator.regions import RegionError, drain, rebalance
from components.swarm.scaling import coupling, despawn_plan, spawn_plan
from world.entities import EntityTable
from world.geometry import RegionIndex, grid_layout
from world.payloads import Bounds, EntityColumns, RegionMap, StepReport, SwarmSpec

WORLD = Bounds(x0=0, y0=0, x1=100, y1=100)


def region_map(
    cols: int = 2, rows: int = 1, districts: tuple[str, ...] = ("d1", "d2")
) -> RegionMap:
    return RegionMap(
        world="main", version=1, bounds=WORLD, regions=grid_layout(WORLD, cols, rows, districts)
    )


def entities(ids: list[str], ov: int = 0, x: float = 10.0) -> EntityColumns:
    n = len(ids)
    return EntityColumns(
        id=ids, x=[x] * n, y=[5.0] * n, vx=[1.0] * n, vy=[0.0] * n, swarm=["s"] * n, ov=[ov] * n
    )


class TestClock:
    def test_on_time_districts_keep_the_target_rate(self) -> None:
        clock = Clock(rate=10)
        now = 0.0
        for _ in range(50):
            assert clock.ready(now)
            tick = clock.start_tick(now, {"d1"})
            clock.reported("d1", tick)
            now = clock.next_at()
        assert clock.dilation == pytest.approx(1.0, abs=1e-6)
        assert clock.tick == 50

    def test_a_timer_that_wakes_late_does_not_slow_the_clock(self) -> None:
        clock = Clock(rate=60)
        now = 0.0
        for _ in range(600):  # every wake 0.6 ms late: the event loop's jitter
            tick = clock.start_tick(now, {"d1"})
            clock.reported("d1", tick)
            now = clock.next_at() + 0.0006
        assert now == pytest.approx(10.0 + 0.0006)  # 600 ticks in 10 s: 60 a second, not 58
        assert clock.dilation == pytest.approx(1.0, abs=1e-3)

    def test_a_held_up_tick_is_not_made_up_by_rushing_the_next(self) -> None:
        clock = Clock(rate=10)
        clock.reported("d1", clock.start_tick(0.0, {"d1"}))
        assert clock.next_at() == pytest.approx(0.1)
        tick = clock.start_tick(0.1, {"d1"})
        clock.reported("d1", tick)  # the tick after this one went 50 ms late
        clock.reported("d1", clock.start_tick(0.25, {"d1"}))
        assert clock.next_at() == pytest.approx(0.35)  # a whole budget after it, not 0.3

    def test_a_slow_district_dilates_time_instead_of_dropping_ticks(self) -> None:
        clock = Clock(rate=10, floor=0.1)
        now = 0.0
        for _ in range(200):
            tick = clock.start_tick(now, {"d1"})
            assert not clock.ready(now + 0.1)  # budget over, but d1 is still busy
            now += 0.25  # d1 needs 250 ms per tick: 4 ticks/s of the 10 asked
            clock.reported("d1", tick)
            assert clock.ready(now)
        assert clock.dilation == pytest.approx(0.4, abs=0.02)
        assert clock.tick == 200

    def test_at_the_floor_the_clock_goes_on_without_the_late_district(self) -> None:
        clock = Clock(rate=10, floor=0.5)
        clock.start_tick(0.0, {"d1"})
        assert not clock.ready(0.19)
        assert clock.ready(0.2)  # budget / floor
        assert clock.next_at() == pytest.approx(0.2)

    def test_a_paused_clock_never_ticks_and_bad_rates_are_refused(self) -> None:
        clock = Clock(rate=10)
        clock.paused = True
        assert not clock.ready(100.0)
        with pytest.raises(ValueError, match="tick rate"):
            clock.set_rate(0)
        with pytest.raises(ValueError, match="floor"):
            Clock(rate=10, floor=0)


class TestRegions:
    def test_drain_gives_the_region_to_the_target_server(self) -> None:
        m = region_map()
        a, b = m.regions
        drained = drain(m, a.id, b.id)
        assert drained.version == 2
        assert [r.district for r in drained.regions] == ["d2", "d2"]

    def test_drain_errors_name_the_problem(self) -> None:
        m = region_map()
        with pytest.raises(RegionError, match="unknown region 'x'"):
            drain(m, "x", m.regions[0].id)
        with pytest.raises(RegionError, match="into itself"):
            drain(m, m.regions[0].id, m.regions[0].id)
        two = region_map(districts=("d1",))
        with pytest.raises(RegionError, match="nothing to move"):
            drain(two, two.regions[0].id, two.regions[1].id)

    def test_a_full_region_splits_to_the_lightest_server_and_idle_halves_merge(self) -> None:
        m = region_map()
        a, b = m.regions
        split_map = rebalance(
            m, {a.id: 900, b.id: 10}, split_above=500, merge_below=0, districts=["d1", "d2", "d3"]
        )
        assert split_map is not None
        halves = [r for r in split_map.regions if r.parent == a.id]
        assert len(halves) == 2 and {h.district for h in halves} == {"d1", "d3"}
        area = sum((r.bounds.x1 - r.bounds.x0) * (r.bounds.y1 - r.bounds.y0) for r in halves)
        assert area == pytest.approx((a.bounds.x1 - a.bounds.x0) * (a.bounds.y1 - a.bounds.y0))
        counts = {h.id: 5 for h in halves}
        merged = rebalance(split_map, counts, split_above=0, merge_below=50, districts=["d1"])
        assert merged is not None
        assert {r.id for r in merged.regions} == {a.id, b.id}
        assert rebalance(m, {a.id: 10}, split_above=500, merge_below=0, districts=["d1"]) is None


class TestSwarmArithmetic:
    def test_spawn_plan_places_members_in_bounds_with_their_owners(self) -> None:
        m = region_map()
        spec = SwarmSpec(name="s", bounds=Bounds(x0=40, y0=0, x1=60, y1=100), max_size=1000)
        plan = spawn_plan(spec, 0, 1000, m, chunk=300)
        index = RegionIndex(m.regions)
        ids = []
        for district, chunks in plan.items():
            for c in chunks:
                assert len(c) <= 300
                ids += c.id
                for x, y in zip(c.x, c.y, strict=True):
                    assert 40 <= x <= 60
                    region = index.region_at(x, y)
                    assert region is not None and region.district == district
        assert sorted(ids) == [f"s-{k:06d}" for k in range(1000)]
        assert set(plan) == {"d1", "d2"}

    def test_despawn_plan_takes_exactly_what_is_asked_from_who_has_it(self) -> None:
        assert despawn_plan({"d1": 10, "d2": 30}, 8) in ({"d1": 2, "d2": 6}, {"d2": 6, "d1": 2})
        plan = despawn_plan({"d1": 1, "d2": 3, "d3": 5}, 9)
        assert plan == {"d1": 1, "d2": 3, "d3": 5}
        assert sum(despawn_plan({"d1": 7, "d2": 7, "d3": 7}, 10).values()) == 10

    def test_coupling_is_one_for_aligned_members_and_near_zero_for_opposed(self) -> None:
        aligned = StepReport(district="d1", tick=1, duration=0, entities=4, swarms={"s": 4},
                             headings={"s": [4.0, 0.0]})  # fmt: skip
        opposed = StepReport(district="d2", tick=1, duration=0, entities=4, swarms={"s": 4},
                             headings={"s": [-4.0, 0.0]})  # fmt: skip
        assert coupling("s", {"d1": aligned}) == pytest.approx(1.0)
        assert coupling("s", {"d1": aligned, "d2": opposed}) == pytest.approx(0.0)


class TestHandoffLedger:
    def test_offers_are_idempotent_and_stale_versions_never_come_back(self) -> None:
        receiver = HandoffLedger("d2")
        table = EntityTable()
        fresh = receiver.take_in(table, entities(["a", "b"], ov=1))
        assert fresh.id == ["a", "b"] and len(table) == 2
        again = receiver.take_in(table, entities(["a", "b"], ov=1))  # QoS 1 redelivery
        assert again.id == [] and len(table) == 2
        # d2 hands "a" on (ov 2); a late re-offer of the ov 1 copy must not resurrect it
        table.remove_ids(["a"])
        receiver.give("d3", entities(["a"], ov=2), now=0.0)
        assert receiver.take_in(table, entities(["a"], ov=1)).id == []
        assert "a" not in table
        # but "a" coming back later with a newer version is taken
        assert receiver.take_in(table, entities(["a"], ov=3)).id == ["a"]

    def test_unaccepted_batches_are_due_again_after_the_retry_interval(self) -> None:
        sender = HandoffLedger("d1")
        batch = sender.give("d2", entities(["a"], ov=1), now=100.0)
        assert sender.due(100.0, retry=0.5) == [batch]
        batch.sent = 100.0
        assert sender.due(100.2, retry=0.5) == []
        assert sender.due(100.6, retry=0.5) == [batch]
        assert sender.accepted(batch.batch) is batch
        assert sender.accepted(batch.batch) is None  # a repeated accept
        assert sender.due(200.0, retry=0.5) == [] and len(sender) == 0


class TestHalo:
    def test_a_flock_split_by_a_border_steps_as_if_there_were_none(self) -> None:
        """Two servers with each other's border strip as halo move their boids exactly as one
        server holding the whole world does: what a boid sees does not depend on the border."""
        import numpy as np

        from components.district.model import District
        from world.behaviours import default_registry
        from world.payloads import SwarmSpec

        world = Bounds(x0=0, y0=0, x1=100, y1=50)
        rng = np.random.default_rng(7)
        n = 400
        pos = np.column_stack((rng.uniform(35, 65, n), rng.uniform(10, 40, n)))
        angle = rng.uniform(0, 2 * np.pi, n)
        vel = np.column_stack((np.cos(angle), np.sin(angle)))
        ids = [f"b{i:03d}" for i in range(n)]
        spec = SwarmSpec(
            name="b", behaviour="flocking", bounds=world, params={"vision": 8.0, "speed": 1.0}
        )

        def district(name: str, cols: int, districts: tuple[str, ...]) -> District:
            d = District(name, default_registry())
            d.set_map(
                RegionMap(world="w", version=1, bounds=world,
                          regions=grid_layout(world, cols, 1, districts))
            )  # fmt: skip
            d.set_swarm(spec)
            return d

        def put(d: District, rows: np.ndarray) -> None:
            d.table.add(
                EntityColumns(
                    id=[ids[i] for i in rows], x=pos[rows, 0].tolist(), y=pos[rows, 1].tolist(),
                    vx=vel[rows, 0].tolist(), vy=vel[rows, 1].tolist(), swarm=["b"] * len(rows),
                )
            )  # fmt: skip

        whole = district("d1", 1, ("d1",))
        put(whole, np.arange(n))
        left, right = district("d1", 2, ("d1", "d2")), district("d2", 2, ("d1", "d2"))
        west = np.flatnonzero(pos[:, 0] < 50)
        east = np.flatnonzero(pos[:, 0] >= 50)
        put(left, west)
        put(right, east)
        left.halo["r0-1"] = (pos[east].copy(), vel[east].copy())
        right.halo["r0-0"] = (pos[west].copy(), vel[west].copy())
        outcomes = [d.step(1, 1.0) for d in (whole, left, right)]
        crossed = len(left.ledger) + len(right.ledger)
        assert crossed > 0  # some left across the border, after their step: they count
        assert [o.stepped for o in outcomes] == [n, len(west), len(east)]
        assert len(left.table) + len(right.table) + crossed == n
        got = {}
        for d in (left, right):
            for i, entity in enumerate(d.table.ids):
                got[entity] = d.table.pos[i].copy()
            for batch in d.ledger.outbound.values():  # crossed the border this tick
                for entity, x, y in zip(batch.entities.id, batch.entities.x, batch.entities.y,
                                        strict=True):  # fmt: skip
                    got[entity] = np.array([x, y])
        want = {entity: whole.table.pos[i] for i, entity in enumerate(whole.table.ids)}
        assert set(got) == set(want)
        worst = max(float(np.abs(got[e] - want[e]).max()) for e in want)
        assert worst < 1e-9, worst
        # and without the halo they would differ: the check can fail
        blind = district("d1", 2, ("d1", "d2"))
        put(blind, west)
        blind.step(1, 1.0)
        moved = {e: blind.table.pos[i] for i, e in enumerate(blind.table.ids)}
        assert any(float(np.abs(moved[e] - want[e]).max()) > 1e-6 for e in moved)
