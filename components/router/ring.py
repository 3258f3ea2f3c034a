"""The event router's logic, pure: the ring buffer, who is subscribed to what, row checks, rates.

Nothing here touches the bus, so each piece is unit-tested on its own
(tests/components/test_router_ring.py); `components.router.component` wires them to topics.

* `Ring`: the last `capacity` events, numbered by a router-wide sequence (1, 2, 3, ...);
* `Subscriptions`: each subscriber's patterns (MQTT filters over event names) and, per distinct
  event name, which subscribers it goes to (an LRU cache: world traffic repeats few names);
* `check_rows`: which rows of an incoming batch are events and why the others are not;
* `Rate`: events per second over a sliding window.

Errors::

    RouterError            root of the router's errors
    └── InvalidRequest     arguments the router refuses (a bad pattern, id, limit, ...)
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from bus.errors import TopicError
from bus.topics import matches, validate_filter, validate_topic

__all__ = [
    "Event",
    "InvalidRequest",
    "Rate",
    "Ring",
    "RouterError",
    "Subscriptions",
    "check_patterns",
    "check_rows",
    "check_subscriber",
    "topic_problem",
]

SUBSCRIBER_RE = re.compile(r"^[a-z0-9_-]{1,64}$")


class RouterError(Exception):
    """Root of the event router's errors; `method` names the request when there is one."""

    def __init__(self, message: str, *, method: str | None = None) -> None:
        super().__init__(message)
        self.method = method


class InvalidRequest(RouterError):
    """Arguments the router refuses; the message says which and why."""


class Event(NamedTuple):
    """One event as a subscriber sees it."""

    seq: int
    topic: str
    data: Any


# -- the ring ---------------------------------------------------------------------------------


class Ring:
    """The last `capacity` events; event `seq` sits at slot `(seq - 1) % capacity`.

    Columns (topics, data) rather than tuples: a batch goes in with two slice assignments and a
    replay comes out as columns. The slots are allocated as the ring fills, not up front.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.next_seq = 1  # the seq the next event gets
        self.depth = 0  # events held
        self._topics: list[str | None] = []
        self._data: list[Any] = []

    def __len__(self) -> int:
        return self.depth

    @property
    def oldest(self) -> int | None:
        """The seq of the oldest event held, None when empty."""
        return self.next_seq - self.depth if self.depth else None

    @property
    def newest(self) -> int | None:
        return self.next_seq - 1 if self.depth else None

    def extend(self, topics: Sequence[str], data: Sequence[Any]) -> int:
        """Append events (the oldest fall out when full); the seq of the first one."""
        n = len(topics)
        if len(data) != n:
            raise ValueError("topics and data differ in length")
        first = self.next_seq
        cap = self.capacity
        if n > cap:  # only the last `capacity` of them stay
            self._write(first + n - cap, topics[n - cap :], data[n - cap :])
        elif n:
            self._write(first, topics, data)
        self.next_seq = first + n
        self.depth = min(cap, self.depth + n)
        return first

    def _write(self, seq: int, topics: Sequence[str], data: Sequence[Any]) -> None:
        cap, m = self.capacity, len(topics)
        i = (seq - 1) % cap
        if len(self._topics) < cap:
            if i == len(self._topics) and i + m <= cap:  # still filling, no wrap yet
                self._topics.extend(topics)
                self._data.extend(data)
                return
            pad = cap - len(self._topics)
            self._topics.extend([None] * pad)
            self._data.extend([None] * pad)
        end = i + m
        if end <= cap:
            self._topics[i:end] = topics
            self._data[i:end] = data
        else:
            k = cap - i
            self._topics[i:], self._topics[: end - cap] = topics[:k], topics[k:]
            self._data[i:], self._data[: end - cap] = data[:k], data[k:]

    def read(self, from_seq: int, limit: int | None = None) -> tuple[int, list[str], list[Any]]:
        """Events with seq >= max(from_seq, oldest), at most `limit` of them, as columns:
        (seq of the first, topics, data). Empty columns when there are none."""
        start = max(from_seq, self.next_seq - self.depth)
        stop = self.next_seq if limit is None else min(self.next_seq, start + max(0, limit))
        if start >= stop:
            return start, [], []
        cap = self.capacity
        i, j = (start - 1) % cap, (stop - 1) % cap
        if i < j:
            topics, data = self._topics[i:j], self._data[i:j]
        else:  # wraps (or the whole ring)
            topics, data = self._topics[i:] + self._topics[:j], self._data[i:] + self._data[:j]
        return start, topics, data  # type: ignore[return-value]  # held slots are never None

    def select(
        self, from_seq: int, limit: int | None = None, match: Callable[[str], bool] | None = None
    ) -> tuple[list[int], list[str], list[Any], int]:
        """Held events from `from_seq` whose topic `match`es (every one when None), at most
        `limit`: (seqs, topics, data, the seq to go on from). `match` is asked once per name."""
        start, topics, data = self.read(from_seq)
        seqs: list[int] = []
        picked: list[int] = []
        resume = start + len(topics)  # read to the end unless the limit stops it
        memo: dict[str, bool] = {}
        for i, topic in enumerate(topics):
            if match is not None:
                hit = memo.get(topic)
                if hit is None:
                    hit = memo[topic] = match(topic)
                if not hit:
                    continue
            if limit is not None and len(picked) >= limit:
                resume = start + i
                break
            picked.append(i)
        if match is None and len(picked) == len(topics):
            return list(range(start, resume)), topics, data, resume
        seqs = [start + i for i in picked]
        return seqs, [topics[i] for i in picked], [data[i] for i in picked], resume

    def events(self, from_seq: int = 0) -> Iterable[Event]:
        """Every held event with seq >= from_seq, oldest first."""
        start, topics, data = self.read(from_seq)
        return (Event(start + k, t, d) for k, (t, d) in enumerate(zip(topics, data, strict=True)))


# -- subscriptions ----------------------------------------------------------------------------


def check_subscriber(value: object) -> str:
    """A subscriber id, or InvalidRequest: it is the `{subscriber}` level of a topic."""
    if not isinstance(value, str) or not SUBSCRIBER_RE.match(value):
        raise InvalidRequest(f"subscriber must be 1 to 64 of [a-z0-9_-], got {value!r}")
    return value


def check_patterns(value: object) -> list[str]:
    """A non-empty list of valid MQTT filters (duplicates dropped), or InvalidRequest."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"patterns must be a non-empty list of filters, got {value!r}")
    out: dict[str, None] = {}
    for pattern in value:
        if not isinstance(pattern, str):
            raise InvalidRequest(f"pattern {pattern!r} is not a string")
        try:
            validate_filter(pattern)
        except TopicError as exc:
            raise InvalidRequest(f"pattern {pattern!r}: {exc}") from exc
        out[pattern] = None
    return list(out)


class Subscriptions:
    """Each subscriber's patterns, and which subscribers an event name goes to (cached).

    Subscribing is idempotent: a pattern a subscriber already has is not added twice, so a
    subscriber that re-subscribes after a router restart (or twice by mistake) gets each event
    once. Any change clears the cache; it refills as events arrive.
    """

    def __init__(
        self, *, cache_size: int = 4096, max_subscribers: int = 10_000, max_patterns: int = 256
    ) -> None:
        self.cache_size = cache_size
        self.max_subscribers = max_subscribers
        self.max_patterns = max_patterns
        self._patterns: dict[str, dict[str, None]] = {}  # subscriber -> ordered set
        # event name -> subscribers it goes to; only valid event names are ever put here
        self._cache: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict()

    def __contains__(self, subscriber: object) -> bool:
        return subscriber in self._patterns

    def __len__(self) -> int:
        return len(self._patterns)

    def patterns(self, subscriber: str) -> list[str]:
        return list(self._patterns.get(subscriber, ()))

    def table(self) -> dict[str, list[str]]:
        """Every subscriber and its patterns, by subscriber."""
        return {s: list(p) for s, p in sorted(self._patterns.items())}

    def subscribe(self, subscriber: str, patterns: Iterable[str]) -> list[str]:
        """Add patterns; the ones that were new. InvalidRequest past a limit (nothing changes)."""
        check_subscriber(subscriber)
        wanted = check_patterns(list(patterns))
        held = self._patterns.get(subscriber)
        if held is None and len(self._patterns) >= self.max_subscribers:
            raise InvalidRequest(f"the router holds {self.max_subscribers} subscribers already")
        new = [p for p in wanted if held is None or p not in held]
        if len(held or ()) + len(new) > self.max_patterns:
            raise InvalidRequest(f"a subscriber holds at most {self.max_patterns} patterns")
        if held is None:
            held = self._patterns[subscriber] = {}
        for p in new:
            held[p] = None
        if new:
            self._cache.clear()
        return new

    def unsubscribe(self, subscriber: str, patterns: Iterable[str] | None = None) -> list[str]:
        """Remove patterns (every one when None); the ones removed. Unknown ones are ignored."""
        held = self._patterns.get(subscriber)
        if held is None:
            return []
        gone = list(held) if patterns is None else [p for p in dict.fromkeys(patterns) if p in held]
        for p in gone:
            del held[p]
        if not held:
            del self._patterns[subscriber]
        if gone:
            self._cache.clear()
        return gone

    def is_known(self, topic: str) -> bool:
        """Whether the event name is cached (and so known to be valid)."""
        return topic in self._cache

    def route(self, topic: str) -> tuple[str, ...]:
        """The subscribers a (valid) event name goes to."""
        cache = self._cache
        hit = cache.get(topic)
        if hit is not None:
            cache.move_to_end(topic)
            return hit
        found = tuple(
            s for s, held in self._patterns.items() if any(matches(p, topic) for p in held)
        )
        cache[topic] = found
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return found

    def fan_out(self, topics: Sequence[str]) -> dict[str, list[int]]:
        """For each subscriber any event goes to, the indexes (into `topics`) of its events."""
        out: dict[str, list[int]] = {}
        local: dict[str, tuple[str, ...]] = {}  # one cache lookup per distinct name per call
        route = self.route
        for i, topic in enumerate(topics):
            subs = local.get(topic)
            if subs is None:
                subs = local[topic] = route(topic)
            for s in subs:
                got = out.get(s)
                if got is None:
                    out[s] = [i]
                else:
                    got.append(i)
        return out


# -- incoming rows ----------------------------------------------------------------------------


def topic_problem(topic: object) -> str | None:
    """Why `topic` is not an event name (None when it is one)."""
    if not isinstance(topic, str):
        return f"topic {topic!r} is not a string"
    if not topic:
        return "topic is empty"
    try:
        validate_topic(topic)
    except TopicError:
        return f"topic {topic!r} has a wildcard or a NUL (event names are topic names)"
    return None


def check_rows(
    topics: Sequence[Any],
    data: Sequence[Any],
    known: Subscriptions | None = None,
    *,
    max_bytes: int | None = None,
) -> tuple[list[str], list[Any], list[tuple[int, str]]]:
    """Split a batch's columns into (event topics, event data, [(row, why) rejected]).

    A name `known` has cached is valid already: checking costs one dict lookup per row. With
    `max_bytes`, an event whose JSON `[topic, data]` is longer is rejected too (the caller asks
    only when the whole message is that long: a shorter one cannot hold such an event).
    """
    cache: Mapping[str, object] = known._cache if known is not None else {}
    bad: list[tuple[int, str]] = []
    for i, topic in enumerate(topics):
        why = None if type(topic) is str and topic in cache else topic_problem(topic)
        if why is None and max_bytes is not None:
            size = len(orjson.dumps([topic, data[i]]))
            if size > max_bytes:
                why = f"event of {size} bytes; at most {max_bytes} can be delivered"
        if why is not None:
            bad.append((i, why))
    if not bad:
        return list(topics), list(data), []
    skip = {i for i, _ in bad}
    keep = [i for i in range(len(topics)) if i not in skip]
    return [topics[i] for i in keep], [data[i] for i in keep], bad


# -- rates ------------------------------------------------------------------------------------


class Rate:
    """Events per second over the last `window` seconds (clock given by the caller)."""

    def __init__(self, window: float, now: float) -> None:
        self.window = window
        self.started = now
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._sum = 0

    def add(self, n: int, now: float) -> None:
        if n:
            self._samples.append((now, n))
            self._sum += n
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        samples = self._samples
        while samples and samples[0][0] <= horizon:
            self._sum -= samples.popleft()[1]

    def per_second(self, now: float) -> float:
        self._prune(now)
        span = min(self.window, now - self.started)
        return self._sum / span if span > 0 else 0.0
