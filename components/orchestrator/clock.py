"""The world clock's rules, without I/O: when the next tick may go, and the time dilation.

Every tick has a budget of `1 / rate` seconds. The next tick goes when the budget is over **and**
every district server has reported the current tick, so a slow district slows the clock instead
of losing ticks (EVE Online's time dilation). The wait for slow districts is capped at
`budget / floor`: at the floor the clock ticks on, and late districts work through the ticks
waiting for them in order (none is skipped). Simulated time per tick stays `1 / rate`, so a
dilated world runs slower, not differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Clock"]


@dataclass(slots=True)
class Clock:
    rate: float  # target ticks per second
    floor: float = 0.1  # lowest dilation before the clock stops waiting for districts
    tick: int = 0
    paused: bool = False
    dilation: float = 1.0  # achieved / target, smoothed
    achieved: float = 0.0  # achieved ticks per second, smoothed
    _sent_at: float | None = None  # when the current tick went out
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
        if self._sent_at is None:
            return 0.0
        due = self._sent_at + self.budget
        if self._waiting:
            return max(due, self._sent_at + self.budget / self.floor)
        return due

    def ready(self, now: float) -> bool:
        if self.paused:
            return False
        if self._sent_at is None:
            return True
        if now < self._sent_at + self.budget:
            return False
        return not self._waiting or now >= self._sent_at + self.budget / self.floor

    def resume(self) -> None:
        self.paused = False
        self._sent_at = None  # no dilation for the time spent paused
        self._waiting.clear()
