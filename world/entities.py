"""The entities one district server owns, in columns (numpy), with ids and swarm codes.

Rows are dense: removing entities compacts the arrays, so `pos[:n]` is always every entity.
Each entity carries an ownership version `ov` that grows by one on every hand-off: of two
copies of an entity, the one with the higher `ov` is the owner's (components/district/handoff).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from world.payloads import EntityColumns

__all__ = ["EntityTable"]

FloatArray = npt.NDArray[np.float64]


class EntityTable:
    """Columnar entities: `ids`, `pos` (n, 2), `vel` (n, 2), `group` (swarm code), `ov`."""

    def __init__(self, capacity: int = 1024) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._pos = np.zeros((capacity, 2), dtype=np.float64)
        self._vel = np.zeros((capacity, 2), dtype=np.float64)
        self._group = np.zeros(capacity, dtype=np.int32)
        self._ov = np.zeros(capacity, dtype=np.int64)
        self.swarms: list[str] = []  # group code -> swarm name ("" for free entities)
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, entity: object) -> bool:
        return entity in self.index

    @property
    def pos(self) -> FloatArray:
        return self._pos[: len(self.ids)]

    @property
    def vel(self) -> FloatArray:
        return self._vel[: len(self.ids)]

    @property
    def group(self) -> npt.NDArray[np.int32]:
        return self._group[: len(self.ids)]

    @property
    def ov(self) -> npt.NDArray[np.int64]:
        return self._ov[: len(self.ids)]

    def code(self, swarm: str) -> int:
        """The group code of a swarm, allocated on first use."""
        code = self._codes.get(swarm)
        if code is None:
            code = self._codes[swarm] = len(self.swarms)
            self.swarms.append(swarm)
        return code

    def _reserve(self, extra: int) -> None:
        need = len(self.ids) + extra
        capacity = len(self._pos)
        if need <= capacity:
            return
        while capacity < need:
            capacity *= 2
        for name in ("_pos", "_vel"):
            grown = np.zeros((capacity, 2), dtype=np.float64)
            grown[: len(self.ids)] = getattr(self, name)[: len(self.ids)]
            setattr(self, name, grown)
        group = np.zeros(capacity, dtype=np.int32)
        group[: len(self.ids)] = self.group
        self._group = group
        ov = np.zeros(capacity, dtype=np.int64)
        ov[: len(self.ids)] = self.ov
        self._ov = ov

    def add(self, columns: EntityColumns | Mapping[str, Sequence[Any]]) -> list[str]:
        """Add entities; ids already present are updated in place when the incoming `ov` is
        not older (a repeated hand-off). Returns the ids that were new."""
        c = columns.model_dump() if isinstance(columns, EntityColumns) else columns
        ids: Sequence[str] = c["id"]
        n = len(ids)
        ov: Sequence[int] = c.get("ov") or [0] * n
        x, y, vx, vy, swarm = c["x"], c["y"], c["vx"], c["vy"], c["swarm"]
        fresh = []
        self._reserve(n)
        for i in range(n):
            entity = ids[i]
            row = self.index.get(entity)
            if row is None:
                row = len(self.ids)
                self.ids.append(entity)
                self.index[entity] = row
                fresh.append(entity)
            elif int(ov[i]) < int(self._ov[row]):
                continue  # an older copy: ours is newer
            self._pos[row] = (x[i], y[i])
            self._vel[row] = (vx[i], vy[i])
            self._group[row] = self.code(swarm[i])
            self._ov[row] = int(ov[i])
        return fresh

    def rows_of(self, ids: Iterable[str]) -> npt.NDArray[np.intp]:
        return np.fromiter((self.index[i] for i in ids if i in self.index), dtype=np.intp)

    def ids_of(self, rows: npt.NDArray[np.intp]) -> list[str]:
        """The ids at `rows` (distinct indices in order, as `np.flatnonzero` gives them). When
        `rows` are all of them (a region that holds the whole district) this is a copy of the
        table's list, several times cheaper than gathering them one by one."""
        if rows.dtype == bool:
            raise TypeError("ids_of takes row indices, not a mask")
        if len(rows) == len(self.ids):
            return self.ids.copy()
        return [self.ids[i] for i in rows.tolist()]

    def swarms_of(self, rows: npt.NDArray[np.intp]) -> list[str]:
        """The swarm names at `rows`, gathered by numpy rather than a loop in Python."""
        names: list[str] = np.array(self.swarms, dtype=object)[self.group[rows]].tolist()
        return names

    def columns(self, rows: npt.NDArray[Any] | None = None) -> EntityColumns:
        """The entities at `rows` (a boolean mask or indices; all when None) as columns."""
        if rows is None:
            rows = np.arange(len(self.ids))
        elif rows.dtype == bool:
            rows = np.flatnonzero(rows)
        pos = self.pos[rows]
        vel = self.vel[rows]
        return EntityColumns.model_construct(
            id=self.ids_of(rows),
            x=pos[:, 0].tolist(),
            y=pos[:, 1].tolist(),
            vx=vel[:, 0].tolist(),
            vy=vel[:, 1].tolist(),
            swarm=self.swarms_of(rows),
            ov=self.ov[rows].tolist(),
        )

    def remove(self, rows: npt.NDArray[Any]) -> EntityColumns:
        """Remove the entities at `rows` (mask or indices); returns them as columns.

        The last rows move into the holes (order is not kept), so removing k entities costs
        O(k), not O(n): a border crossing of a few entities in a district of 50,000."""
        n = len(self.ids)
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        gone = self.columns(mask)
        k = len(gone.id)
        if not k:
            return gone
        for entity in gone.id:
            del self.index[entity]
        holes = np.flatnonzero(mask[: n - k])  # removed rows that survivors must fill
        tail = np.flatnonzero(~mask[n - k :]) + (n - k)  # survivors past the new end
        if len(holes):
            for array in (self._pos, self._vel, self._group, self._ov):
                array[holes] = array[tail]
            ids = self.ids
            for hole, source in zip(holes.tolist(), tail.tolist(), strict=True):
                entity = ids[source]
                ids[hole] = entity
                self.index[entity] = hole
        del self.ids[n - k :]
        return gone

    def remove_ids(self, ids: Iterable[str]) -> EntityColumns:
        return self.remove(self.rows_of(ids))

    def count_by_swarm(self) -> dict[str, int]:
        counts = np.bincount(self.group, minlength=len(self.swarms))
        return {s: int(c) for s, c in zip(self.swarms, counts.tolist(), strict=True) if c}
