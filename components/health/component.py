"""The health monitor: the table of every component, published retained on `mv/sys/health`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import ClassVar

from bus import Bus, Subscription
from bus.payloads import HealthSummary, Heartbeat, Status
from components.health.settings import HealthSettings
from components.health.table import HealthTable
from components.runtime.component import Component

__all__ = ["HealthMonitor"]


class HealthMonitor(Component):
    kind: ClassVar[str] = "health"
    settings_model: ClassVar[type[HealthSettings]] = HealthSettings
    settings: HealthSettings

    def __init__(self, settings: HealthSettings, **kwargs: object) -> None:
        super().__init__(settings, **kwargs)  # type: ignore[arg-type]
        self.table = HealthTable(settings.health_missed_beats, settings.health_forget_after)
        self._changed = asyncio.Event()
        self._rearm = asyncio.Event()

    def serves(self) -> list[str]:
        return [*super().serves(), str(self.topics["health"].build())]

    async def main(self, bus: Bus) -> None:
        statuses = await bus.subscribe(self.topics["component.status"].build())
        beats = await bus.subscribe(self.topics["component.heartbeat"].build())
        self.serving()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._statuses(statuses), name="health-statuses")
            tg.create_task(self._beats(beats), name="health-beats")
            tg.create_task(self._sweeper(), name="health-sweeper")
            tg.create_task(self._publisher(bus), name="health-publisher")

    async def _statuses(self, sub: Subscription) -> None:
        async for msg in sub:
            if isinstance(msg.payload, Status) and self.table.status(
                msg.payload, time.monotonic(), time.time()
            ):
                self._changed.set()
                self._rearm.set()

    async def _beats(self, sub: Subscription) -> None:
        async for msg in sub:
            params = msg.params
            if isinstance(msg.payload, Heartbeat) and self.table.heartbeat(
                params["kind"], params["id"], msg.payload, time.monotonic(), time.time()
            ):
                self._changed.set()
                self._rearm.set()

    async def _sweeper(self) -> None:
        while True:
            now = time.monotonic()
            if self.table.sweep(now):
                self._changed.set()
            # wake just after the next possible expiry, or when the table changed
            self._rearm.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (stop())
            # that lands as the event fires, and the loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.table.next_deadline(now) + 0.005, 1.0)):
                    await self._rearm.wait()

    def summary(self) -> HealthSummary:
        rows = self.table.rows()
        return HealthSummary(
            monitor=self.id,
            generated=time.time(),
            components=rows,
            online=sum(r.state == "online" for r in rows),
            stale=sum(r.state == "stale" for r in rows),
            offline=sum(r.state == "offline" for r in rows),
        )

    async def republish(self, bus: Bus) -> None:
        await bus.publish(self.topics["health"].build(), self.summary())

    async def _publisher(self, bus: Bus) -> None:
        interval = self.settings.health_publish_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._changed.wait()
            self._changed.clear()
            await self.republish(bus)
            await asyncio.sleep(0.05)  # coalesce bursts: at most 20 summaries a second
