"""The world clock's rules, without I/O: when the next tick may go, and the time dilation.

Every tick has a budget of `1 / rate` seconds. The next tick goes when the budget is over **and**
every district server has reported the current tick, so a slow district slows the clock instead
of losing ticks (EVE Online's time dilation). The wait for slow districts is capped at
`budget / floor`: at the floor the clock ticks on, and late districts work through the ticks
waiting for them in order (none is skipped). Simulated time per tick stays `1 / rate`, so a
dilated world runs slower, not differently.

Ticks are due on a fixed schedule (`start + k * budget`), not a budget after the previous tick
went out: a timer that wakes a little late (the event loop's jitter, a fraction of a
millisecond) is made up on the next tick instead of adding up, so an idle box keeps the target
rate exactly. A tick later than `LATE` of a budget (a district held it up) starts a new schedule
from when it went: the clock does not rush the next ticks to catch up, which would take the
districts' budget away; that lost time is the dilation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Clock"]

LATE = 0.25  # of a budget: a tick later than this starts a new schedule (no catch-up burst)


@dataclass(slots=True)
class Clock:
    rate: float  # target ticks per second
    floor: float = 0.1  # lowest dilation before the clock stops waiting for districts
    tick: int = 0
    paused: bool = False
    dilation: float = 1.0  # achieved / target, smoothed
    achieved: float = 0.0  # achieved ticks per second, smoothed
    _sent_at: float | None = None  # when the current tick went out
    _due: float | None = None  # when the current tick was due on the schedule
    _waiting: set[str] = field(default_factory=set)
    _smoothing: float = 0.1

    def __post_init__(self) -> None:
        self.set_rate(self.rate)
        if not 0 < self.floor <= 1:
            raise ValueError(f"dilation floor must be in (0, 1], got {self.floor}")
        self.achieved = self.rate

    @property
    def budget(self) -> float:
        return 1.0 / self.rate

    @property
    def dt(self) -> float:
        """Simulated seconds per tick."""
        return 1.0 / self.rate

    def set_rate(self, rate: float) -> None:
        if not 0 < rate <= 1000:
            raise ValueError(f"tick rate must be in (0, 1000] ticks per second, got {rate}")
        self.rate = float(rate)

    def start_tick(self, now: float, districts: set[str]) -> int:
        """The next tick goes out at `now`, to be reported by `districts`."""
        if self._sent_at is not None:
            interval = max(now - self._sent_at, 1e-9)
            a = self._smoothing
            self.achieved = (1 - a) * self.achieved + a * (1.0 / interval)
            self.dilation = min(1.0, max(self.floor, self.achieved / self.rate))
        if self._due is None or now - (self._due + self.budget) > LATE * self.budget:
            self._due = now  # first tick, or held up: a new schedule from here
        else:
            self._due += self.budget
        self.tick += 1
        self._sent_at = now
        self._waiting = set(districts)
        return self.tick

    def reported(self, district: str, tick: int) -> None:
        if tick >= self.tick:
            self._waiting.discard(district)

    @property
    def waiting(self) -> set[str]:
        return set(self._waiting)

    def next_at(self) -> float:
        """When the next tick may go: the budget's end, later while districts are still busy
        (at most until the floor's stretch)."""
        if self._sent_at is None or self._due is None:  # set together
            return 0.0
        due = self._due + self.budget
        if self._waiting:
            return max(due, self._sent_at + self.budget / self.floor)
        return due

    def ready(self, now: float) -> bool:
        if self.paused:
            return False
        if self._sent_at is None or self._due is None:  # set together
            return True
        if now < self._due + self.budget:
            return False
        return not self._waiting or now >= self._sent_at + self.budget / self.floor

    def resume(self) -> None:
        self.paused = False
        self._sent_at = self._due = None  # no dilation for the time spent paused
        self._waiting.clear()
