"""The hand-off protocol: an entity crossing a border changes owner, and never has two.

Ownership is carried by the entity's ownership version `ov`, which grows by one per hand-off.
From source S to target T:

1. S removes the entity from its table, gives it `ov + 1`, and records it in its ledger as an
   outbound batch for T. The record is **persisted before the offer is sent** (the journal
   entry of the tick), so a restarted S can never bring back the copy it gave away.
2. T receives the `offer`: each entity it has not already seen at that version or later enters
   its table. T **persists that, then** sends `accept` with the ids. A repeated offer (QoS 1
   redelivery, or S re-sending after a restart) is accepted again and changes nothing.
3. S receives the `accept` and drops the batch from its ledger (journalled too).

At every moment an entity is in exactly one place: one district's table, or one district's
ledger while the offer is in flight. Nothing is lost because the ledger re-sends unaccepted
batches (`due`) until they are accepted, across restarts. Nothing is owned twice because S drops
its copy before the offer leaves and T ignores offers older than what it has seen (tombstones,
`seen`), e.g. an entity that came back to S after T handed it on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from world.entities import EntityTable
from world.payloads import EntityColumns

__all__ = ["HandoffLedger", "Outbound"]


@dataclass(slots=True)
class Outbound:
    """A batch of entities offered to `to`, waiting for its accept."""

    batch: str
    to: str
    entities: EntityColumns
    created: float
    sent: float = 0.0  # 0 until first sent
    tries: int = 0

    def dump(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "to": self.to,
            "entities": self.entities.model_dump(),
            "created": self.created,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> Outbound:
        return cls(
            batch=data["batch"],
            to=data["to"],
            entities=EntityColumns.model_validate(data["entities"]),
            created=float(data.get("created", 0.0)),
        )


@dataclass(slots=True)
class HandoffLedger:
    """One district server's outbound batches and the versions it has seen (tombstones)."""

    district: str
    outbound: dict[str, Outbound] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # entity -> highest ov it held or gave
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _stamp: str = field(default_factory=lambda: f"{time.time_ns() // 1_000_000:x}")

    def __len__(self) -> int:
        return sum(len(b.entities) for b in self.outbound.values())

    def give(self, to: str, entities: EntityColumns, now: float) -> Outbound:
        """Record `entities` (already removed from the table, `ov` already raised) for `to`."""
        batch = Outbound(
            batch=f"{self.district}-{self._stamp}-{next(self._numbers)}",
            to=to,
            entities=entities,
            created=now,
        )
        self.outbound[batch.batch] = batch
        for entity, ov in zip(entities.id, entities.ov, strict=True):
            self.seen[entity] = max(ov, self.seen.get(entity, 0))
        return batch

    def restore(self, batch: Outbound) -> None:
        self.outbound[batch.batch] = batch
        for entity, ov in zip(batch.entities.id, batch.entities.ov, strict=True):
            self.seen[entity] = max(ov, self.seen.get(entity, 0))

    def accepted(self, batch: str) -> Outbound | None:
        """The receiver took the batch: forget it. None when already forgotten (a repeat)."""
        return self.outbound.pop(batch, None)

    def due(self, now: float, retry: float) -> list[Outbound]:
        """Batches never sent, or sent more than `retry` seconds ago without an accept."""
        return [b for b in self.outbound.values() if b.sent == 0.0 or now - b.sent >= retry]

    def take_in(self, table: EntityTable, entities: EntityColumns) -> EntityColumns:
        """An offer arrived: add what is newer than anything seen; returns what was added.

        Every offered id is acknowledged by the caller either way (a stale offer's sender must
        still drop its ledger entry); only newer versions enter the table.
        """
        rows = [
            i
            for i, (entity, ov) in enumerate(zip(entities.id, entities.ov, strict=True))
            if ov > self.seen.get(entity, -1) and entity not in table
        ]
        if not rows:
            return EntityColumns.empty()
        fresh = entities.take(rows)
        table.add(fresh)
        for entity, ov in zip(fresh.id, fresh.ov, strict=True):
            self.seen[entity] = ov
        return fresh

    def forget(self, entities: EntityColumns | list[str], ov: int) -> None:
        """Despawned entities: never take them back from a late spawn or offer."""
        ids = entities.id if isinstance(entities, EntityColumns) else entities
        for entity in ids:
            self.seen[entity] = max(ov, self.seen.get(entity, 0))
