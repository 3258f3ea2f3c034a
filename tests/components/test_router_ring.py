"""components.router.ring: the ring buffer, subscriptions and their cache, row checks, rates."""

from __future__ import annotations

import random

import pytest

from bus.topics import matches
from components.router.ring import (
    Event,
    InvalidRequest,
    Rate,
    Ring,
    Subscriptions,
    check_patterns,
    check_rows,
    check_subscriber,
    topic_problem,
)

# -- the ring ---------------------------------------------------------------------------------


def test_events_are_numbered_from_one_and_read_back_as_columns() -> None:
    ring = Ring(10)
    assert (ring.oldest, ring.newest, ring.next_seq, len(ring)) == (None, None, 1, 0)
    assert ring.extend(["a", "b"], [1, 2]) == 1
    assert ring.extend(["c"], [3]) == 3
    assert (ring.oldest, ring.newest, ring.next_seq, ring.depth) == (1, 3, 4, 3)
    assert ring.read(0) == (1, ["a", "b", "c"], [1, 2, 3])
    assert ring.read(2, limit=1) == (2, ["b"], [2])
    assert list(ring.events(3)) == [Event(3, "c", 3)]


def test_the_ring_holds_the_last_capacity_events_and_wraps() -> None:
    ring = Ring(4)
    for i in range(1, 11):
        ring.extend([f"t{i}"], [i])
    assert (ring.depth, ring.oldest, ring.newest) == (4, 7, 10)
    assert ring.read(1) == (7, ["t7", "t8", "t9", "t10"], [7, 8, 9, 10])
    assert ring.read(9) == (9, ["t9", "t10"], [9, 10])
    assert ring.read(8, limit=2) == (8, ["t8", "t9"], [8, 9])


def test_a_batch_larger_than_the_ring_keeps_its_last_events_and_every_seq_counts() -> None:
    ring = Ring(3)
    ring.extend(["x"], [0])
    assert ring.extend([f"t{i}" for i in range(5)], list(range(5))) == 2
    assert ring.next_seq == 7
    assert ring.read(0) == (4, ["t2", "t3", "t4"], [2, 3, 4])


def test_reading_past_the_end_or_with_a_zero_limit_gives_nothing() -> None:
    ring = Ring(5)
    ring.extend(["a", "b"], [1, 2])
    assert ring.read(3) == (3, [], [])
    assert ring.read(50) == (50, [], [])
    assert ring.read(1, limit=0) == (1, [], [])
    assert Ring(2).read(0) == (1, [], [])


def test_the_ring_agrees_with_a_list_of_everything_under_random_batches() -> None:
    rng = random.Random(7)
    for capacity in (1, 2, 7, 64):
        ring = Ring(capacity)
        everything: list[tuple[str, int]] = []
        for _ in range(200):
            n = rng.randrange(0, capacity * 2 + 2)
            batch = [(f"t{len(everything) + k}", len(everything) + k) for k in range(n)]
            ring.extend([t for t, _ in batch], [d for _, d in batch])
            everything += batch
            start = rng.randrange(0, len(everything) + 3)
            limit = rng.choice([None, 0, 1, 5, capacity])
            first, topics, data = ring.read(start, limit)
            held = everything[-capacity:] if everything else []
            oldest = len(everything) - len(held) + 1
            expect = [e for seq, e in enumerate(held, oldest) if seq >= start]
            if limit is not None:
                expect = expect[:limit]
            assert list(zip(topics, data, strict=True)) == expect
            assert first == max(start, oldest)
            assert ring.depth == len(held)


def test_select_picks_by_name_up_to_a_limit_and_says_where_to_go_on() -> None:
    ring = Ring(8)
    ring.extend([f"z/{i % 3}" for i in range(10)], list(range(10)))  # seqs 3..10 held
    asked: list[str] = []

    def is_one(topic: str) -> bool:
        asked.append(topic)
        return topic == "z/1"

    seqs, topics, data, resume = ring.select(0, 2, is_one)
    assert (seqs, topics, data, resume) == ([5, 8], ["z/1", "z/1"], [4, 7], 11)
    assert sorted(asked) == ["z/0", "z/1", "z/2"]  # once per distinct name
    assert ring.select(0, 1, is_one)[::3] == ([5], 8)  # the next z/1 is where to go on
    assert ring.select(9) == ([9, 10], ["z/2", "z/0"], [8, 9], 11)
    assert ring.select(4, 2) == ([4, 5], ["z/0", "z/1"], [3, 4], 6)
    assert ring.select(20, 5) == ([], [], [], 20)


def test_a_ring_needs_room_for_one_event() -> None:
    with pytest.raises(ValueError):
        Ring(0)


# -- subscriptions ----------------------------------------------------------------------------


def test_subscribing_twice_with_the_same_patterns_adds_nothing() -> None:
    subs = Subscriptions()
    assert subs.subscribe("a", ["world/+/handoff", "world/#", "world/#"]) == [
        "world/+/handoff",
        "world/#",
    ]
    assert subs.subscribe("a", ["world/#", "world/+/handoff"]) == []
    assert subs.patterns("a") == ["world/+/handoff", "world/#"]
    assert subs.fan_out(["world/main/handoff"]) == {"a": [0]}  # once, though two patterns match


def test_events_go_to_the_subscribers_whose_patterns_match() -> None:
    subs = Subscriptions()
    subs.subscribe("a", ["world/+/handoff"])
    subs.subscribe("b", ["world/#"])
    subs.subscribe("c", ["realm/+"])
    topics = ["world/main/handoff", "world/main/tick", "realm/x", "world/other/handoff", "zzz"]
    assert subs.fan_out(topics) == {"a": [0, 3], "b": [0, 1, 3], "c": [2]}
    assert subs.route("zzz") == ()


def test_the_route_cache_follows_subscription_changes() -> None:
    subs = Subscriptions()
    subs.subscribe("a", ["x/+"])
    assert subs.route("x/1") == ("a",)
    subs.subscribe("b", ["x/1"])
    assert subs.route("x/1") == ("a", "b")
    assert subs.unsubscribe("a", ["x/+", "not/held"]) == ["x/+"]
    assert subs.route("x/1") == ("b",)
    assert "a" not in subs  # no pattern left: gone
    assert subs.unsubscribe("b") == ["x/1"]
    assert subs.route("x/1") == ()
    assert subs.unsubscribe("nobody") == []


def test_the_route_cache_is_bounded_and_keeps_what_is_used() -> None:
    subs = Subscriptions(cache_size=3)
    subs.subscribe("a", ["#"])
    for name in ("t/1", "t/2", "t/3"):
        subs.route(name)
    subs.route("t/1")  # used again: the least recently used is now t/2
    subs.route("t/4")
    assert [subs.is_known(n) for n in ("t/1", "t/2", "t/3", "t/4")] == [True, False, True, True]


def test_the_cached_routes_agree_with_the_one_matcher() -> None:
    rng = random.Random(3)
    levels = ["a", "b", "c", "$sys"]
    filters = ["#", "+", "a/#", "+/b", "a/+/c", "$sys/#", "+/+/+", "a/b/c", "b"]
    subs = Subscriptions(cache_size=8)
    table: dict[str, list[str]] = {}
    for n in range(6):
        chosen = rng.sample(filters, 3)
        subs.subscribe(f"s{n}", chosen)
        table[f"s{n}"] = chosen
    for _ in range(500):
        topic = "/".join(rng.choice(levels) for _ in range(rng.randrange(1, 4)))
        expect = tuple(s for s, fs in table.items() if any(matches(f, topic) for f in fs))
        assert subs.route(topic) == expect, topic


def test_limits_on_subscribers_and_patterns_change_nothing_when_hit() -> None:
    subs = Subscriptions(max_subscribers=1, max_patterns=2)
    subs.subscribe("a", ["x"])
    with pytest.raises(InvalidRequest, match="subscribers"):
        subs.subscribe("b", ["x"])
    with pytest.raises(InvalidRequest, match="at most 2 patterns"):
        subs.subscribe("a", ["y", "z"])
    assert subs.table() == {"a": ["x"]}
    assert subs.subscribe("a", ["x", "y"]) == ["y"]  # one held already: within the limit


@pytest.mark.parametrize(
    "patterns", [[], "world/#", ["a/#/b"], ["a+"], [""], [3], ["ok", "x/#/"]], ids=repr
)
def test_bad_patterns_are_refused_with_the_reason(patterns: object) -> None:
    with pytest.raises(InvalidRequest):
        check_patterns(patterns)
    if isinstance(patterns, list):
        subs = Subscriptions()
        with pytest.raises(InvalidRequest):
            subs.subscribe("a", patterns)
        assert len(subs) == 0


@pytest.mark.parametrize("subscriber", ["", "Upper", "a/b", "x" * 65, None, 5, "+"])
def test_bad_subscriber_ids_are_refused(subscriber: object) -> None:
    with pytest.raises(InvalidRequest, match="subscriber"):
        check_subscriber(subscriber)


# -- incoming rows ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("world/main/handoff", None),
        ("a", None),
        ("$sys/x", None),
        ("", "empty"),
        ("world/+/handoff", "wildcard"),
        ("world/#", "wildcard"),
        ("a\x00b", "wildcard or a NUL"),
        (7, "not a string"),
        (None, "not a string"),
        (["a"], "not a string"),
    ],
)
def test_topic_problems(topic: object, problem: str | None) -> None:
    got = topic_problem(topic)
    assert got is None if problem is None else (got is not None and problem in got)


def test_check_rows_keeps_the_good_rows_in_order_and_names_the_bad_ones() -> None:
    topics = ["a/b", 5, "a/+", "c", "", {"x": 1}]
    data = [1, 2, 3, {"k": 4}, 5, 6]
    good_topics, good_data, bad = check_rows(topics, data)
    assert (good_topics, good_data) == (["a/b", "c"], [1, {"k": 4}])
    assert [i for i, _ in bad] == [1, 2, 4, 5]
    assert all(isinstance(why, str) and why for _, why in bad)


def test_check_rows_can_reject_events_too_large_to_deliver() -> None:
    _, data, bad = check_rows(["a", "b"], ["x" * 10, "y" * 500], max_bytes=100)
    assert data == ["x" * 10]
    assert bad[0][0] == 1 and "bytes" in bad[0][1]


def test_cached_names_skip_the_check() -> None:
    subs = Subscriptions()
    subs.subscribe("s", ["#"])
    subs.route("a/b")
    assert subs.is_known("a/b")
    assert check_rows(["a/b", "a/b"], [1, 2], subs) == (["a/b", "a/b"], [1, 2], [])


# -- rates ------------------------------------------------------------------------------------


def test_the_rate_counts_the_last_window_only() -> None:
    rate = Rate(10.0, now=100.0)
    assert rate.per_second(100.0) == 0.0
    rate.add(50, now=101.0)
    assert rate.per_second(102.0) == pytest.approx(25.0)  # 50 over the 2 s it has run
    rate.add(100, now=108.0)
    assert rate.per_second(110.0) == pytest.approx(15.0)  # 150 over the 10 s window
    assert rate.per_second(111.5) == pytest.approx(10.0)  # the first 50 fell out
    assert rate.per_second(200.0) == 0.0
