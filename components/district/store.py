"""A district server's persistence: a snapshot every N ticks plus a journal of ownership changes.

Recovery loads the last snapshot, then replays the journal entries written after it, so every
hand-off and spawn acknowledged before a crash (kill -9 included) is back after the restart.
"""

from __future__ import annotations

from typing import Any

from components.district.model import District, Journal
from store import Store

__all__ = ["DistrictStore"]


class DistrictStore:
    """The rows of one district server of one world in the shared store."""

    def __init__(self, store: Store, world: str, district: str) -> None:
        self.store = store
        self.owner = f"{world}/{district}"
        self.stream = f"district/{world}/{district}"
        self.last_index = 0

    async def load(self, district: District) -> bool:
        """Restore `district` from storage; False when nothing was stored yet."""
        snap = await self.store.get_snapshot("district", self.owner, "state")
        after = 0
        if snap is not None:
            district.load(snap.payload)
            after = int(snap.payload.get("journal", 0))
        entries = await self.store.read(self.stream, after + 1)
        for entry in entries:
            district.replay(entry.payload)
        self.last_index = entries[-1].index if entries else after
        if snap is None and not entries:
            self.last_index = await self.store.last_index(self.stream)
            return False
        return True

    async def journal(self, journal: Journal) -> None:
        """Persist one tick's ownership changes (before any of them is announced)."""
        self.last_index = await self.store.append(self.stream, 0, journal.dump())

    async def snapshot(self, state: dict[str, Any]) -> None:
        """Persist the whole state: `District.dump()` with `journal`, the last journal index it
        covers. The entries it covers are dropped (the last one stays, so the journal's
        indexes keep growing)."""
        covered = int(state.setdefault("journal", self.last_index))
        await self.store.put_snapshot("district", self.owner, "state", state)
        if covered > 1:
            await self.store.compact(self.stream, covered)
