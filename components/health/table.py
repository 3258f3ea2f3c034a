"""The health table: pure logic, fed births, deaths and heartbeats, asked what is stale.

Rules (DESIGN.md, "Health and liveness"):
* a birth with an epoch at least the known one makes a component online under that epoch;
* a death counts only if its epoch is at least the current birth's (a Will can overtake a
  rebirth: an older death is ignored);
* a heartbeat of the current (or a newer) epoch refreshes `last_seen`, and revives a stale one;
* a component whose last beat is older than `missed_beats` heartbeat intervals is stale. This
  does not rely on the broker: amqtt never disconnects a hung client, so its Will never fires.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.payloads import ComponentHealth, Heartbeat, Status

__all__ = ["Entry", "HealthTable"]


@dataclass
class Entry:
    kind: str
    id: str
    state: str  # online | stale | offline
    epoch: int
    interval: float
    last_seen: float  # monotonic clock
    last_seen_wall: float
    last_seq: int = -1
    version: str = ""

    def view(self) -> ComponentHealth:
        return ComponentHealth(
            kind=self.kind,
            id=self.id,
            state=self.state,
            epoch=self.epoch,
            last_seq=self.last_seq,
            last_seen=self.last_seen_wall,
            version=self.version,
        )


class HealthTable:
    def __init__(self, missed_beats: float = 2.0, forget_after: float = 3600.0) -> None:
        self.missed_beats = missed_beats
        self.forget_after = forget_after
        self.entries: dict[tuple[str, str], Entry] = {}

    def status(self, status: Status, now: float, wall: float) -> bool:
        """Apply a birth or death; True if the table changed."""
        key = (status.kind, status.id)
        entry = self.entries.get(key)
        if entry is not None and status.epoch < entry.epoch:
            return False  # an old Will (or an old retained birth) overtaken by a rebirth
        if entry is None:
            self.entries[key] = Entry(
                status.kind,
                status.id,
                status.state,
                status.epoch,
                status.heartbeat_interval,
                now,
                wall,
                -1,
                status.version,
            )
            return True
        if status.state == "online":
            changed = entry.state != "online" or entry.epoch != status.epoch
            entry.state, entry.epoch = "online", status.epoch
            entry.interval, entry.version = status.heartbeat_interval, status.version
            entry.last_seen, entry.last_seen_wall = now, wall
            if changed:
                entry.last_seq = -1
            return changed
        changed = entry.state != "offline"
        entry.state, entry.epoch = "offline", status.epoch
        entry.last_seen = now  # forget_after counts from the death
        return changed

    def heartbeat(self, kind: str, id: str, beat: Heartbeat, now: float, wall: float) -> bool:
        """Apply a heartbeat; True if the component's state changed."""
        entry = self.entries.get((kind, id))
        if entry is None:
            # beats before (or without) a birth: known from now on, interval unknown (1 s)
            self.entries[(kind, id)] = Entry(
                kind, id, "online", beat.epoch, 1.0, now, wall, beat.seq
            )
            return True
        if beat.epoch < entry.epoch or (beat.epoch == entry.epoch and entry.state == "offline"):
            return False  # a late beat of an older session, or of one that said goodbye
        changed = entry.state != "online" or beat.epoch != entry.epoch
        entry.state, entry.epoch = "online", beat.epoch
        entry.last_seen, entry.last_seen_wall, entry.last_seq = now, wall, beat.seq
        if beat.interval is not None:
            entry.interval = beat.interval
        return changed

    def sweep(self, now: float) -> bool:
        """Mark stale what missed its beats, forget long-gone entries; True if anything changed."""
        changed = False
        for key, entry in list(self.entries.items()):
            silent = now - entry.last_seen
            if entry.state == "online" and silent > self.missed_beats * entry.interval:
                entry.state = "stale"
                changed = True
            elif entry.state in ("offline", "stale") and silent > self.forget_after:
                # a stale one too: one that hung and never came back sends no death
                del self.entries[key]
                changed = True
        return changed

    def next_deadline(self, now: float) -> float:
        """Seconds until the earliest online entry would turn stale (for the sweep timer)."""
        waits = [
            e.last_seen + self.missed_beats * e.interval - now
            for e in self.entries.values()
            if e.state == "online"
        ]
        return max(0.0, min(waits)) if waits else 1.0

    def rows(self) -> list[ComponentHealth]:
        return [self.entries[k].view() for k in sorted(self.entries)]
