"""Outgoing QoS 1 messages the broker has not acknowledged yet: the in-flight window.

Kept by packet id in send order. The bus resends all of them, in that order, on every new
connection (MQTT 3.1.1 4.4), so none is lost across a dropped connection or a broker restart.
A publish waits while the window is full (`max_inflight`): backpressure, not loss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import ItemsView
from dataclasses import dataclass
from typing import Any

from bus.errors import BusError, NotConnected

__all__ = ["Inflight", "Outgoing"]

_MAX_PID = 49151  # 49152.. are the connection's SUBSCRIBE/UNSUBSCRIBE ids


@dataclass(slots=True)
class Outgoing:
    topic: bytes
    payload: bytes
    retain: bool
    sent: float
    done: asyncio.Future[None] | None


class Inflight:
    def __init__(self, limit: int, latency: Any) -> None:
        self.limit = limit
        self._latency = latency  # a prometheus histogram child
        self._items: dict[int, Outgoing] = {}
        self._next_pid = 0
        self._window = asyncio.Event()
        self._window.set()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> ItemsView[int, Outgoing]:
        return self._items.items()

    async def reserve(self) -> None:
        """Wait for room in the window (NotConnected once the bus closed)."""
        while len(self._items) >= self.limit and not self.closed:
            self._window.clear()
            await self._window.wait()
        if self.closed:
            raise NotConnected("bus closed")

    def add(
        self, topic: bytes, payload: bytes, retain: bool, done: asyncio.Future[None] | None
    ) -> int:
        """Keep a message until it is acknowledged; returns its packet id."""
        pid = self._pid()
        self._items[pid] = Outgoing(topic, payload, retain, time.perf_counter(), done)
        self._all_acked.clear()
        return pid

    def _pid(self) -> int:
        for _ in range(_MAX_PID):
            self._next_pid = self._next_pid % _MAX_PID + 1
            if self._next_pid not in self._items:
                return self._next_pid
        raise BusError("no free packet id")  # pragma: no cover - limit < 49151

    def ack(self, pid: int) -> None:
        out = self._items.pop(pid, None)
        if out is None:
            return  # a duplicate acknowledgement (after a resend)
        self._latency.observe(time.perf_counter() - out.sent)
        if out.done is not None and not out.done.done():
            out.done.set_result(None)
        if not self._window.is_set() and len(self._items) < self.limit:
            self._window.set()
        if not self._items:
            self._all_acked.set()

    async def wait_all(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._all_acked.wait(), timeout)

    def fail_all(self, error: BaseException) -> None:
        """Nobody will acknowledge these any more (the bus closed): release every waiter."""
        self.closed = True
        for out in self._items.values():
            if out.done is not None and not out.done.done():
                out.done.set_exception(error)
        self._all_acked.set()
        self._window.set()
