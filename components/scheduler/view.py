"""What the scheduler knows of the world: the latest positions of every region's entities.

Built from the districts' batched `updates` (one tick of a region may come in several
messages; a region's tick is complete when its next tick starts arriving) and searched with a
k-d tree, rebuilt at most once per tick, for what an agent can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

__all__ = ["Seen", "WorldView"]


@dataclass(slots=True)
class _Region:
    tick: int = -1
    parts: list[dict[str, list[Any]]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    pos: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    swarm: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Seen:
    id: str
    x: float
    y: float
    swarm: str
    distance: float


class WorldView:
    def __init__(self) -> None:
        self.regions: dict[str, _Region] = {}
        self._tree: cKDTree | None = None
        self._ids: list[str] = []
        self._swarm: list[str] = []
        self._pos: npt.NDArray[np.float64] = np.zeros((0, 2))
        self._index: dict[str, int] = {}
        self._dirty = True

    def update(self, region: str, tick: int, columns: dict[str, list[Any]]) -> None:
        """One message of a region's updates for `tick`."""
        r = self.regions.setdefault(region, _Region())
        if tick > r.tick:
            if r.parts:
                self._complete(r)
            r.tick = tick
            r.parts = []
        if tick == r.tick:
            r.parts.append(columns)

    def _complete(self, r: _Region) -> None:
        ids: list[str] = []
        swarm: list[str] = []
        for part in r.parts:
            ids += part["id"]
            swarm += part["swarm"]
        pos = np.empty((len(ids), 2))
        if ids:
            pos[:, 0] = np.concatenate([p["x"] for p in r.parts])
            pos[:, 1] = np.concatenate([p["y"] for p in r.parts])
        r.ids, r.pos, r.swarm = ids, pos, swarm
        self._dirty = True

    def _build(self) -> None:
        if not self._dirty:
            return
        regions = list(self.regions.values())
        self._ids = [i for r in regions for i in r.ids]
        self._swarm = [s for r in regions for s in r.swarm]
        self._pos = np.concatenate([r.pos for r in regions]) if regions else np.zeros((0, 2))
        self._index = {e: i for i, e in enumerate(self._ids)}
        self._tree = cKDTree(self._pos) if len(self._pos) else None
        self._dirty = False

    def where(self, entity: str) -> tuple[float, float] | None:
        self._build()
        i = self._index.get(entity)
        if i is None:
            return None
        return float(self._pos[i, 0]), float(self._pos[i, 1])

    def near(self, x: float, y: float, radius: float, limit: int, exclude: str = "") -> list[Seen]:
        """The entities within `radius` of (x, y), nearest first, at most `limit`."""
        self._build()
        if self._tree is None or limit <= 0:
            return []
        rows: Sequence[int] = self._tree.query_ball_point((x, y), radius)
        seen = []
        for i in rows:
            if self._ids[i] == exclude:
                continue
            dx, dy = self._pos[i, 0] - x, self._pos[i, 1] - y
            seen.append(
                Seen(self._ids[i], float(self._pos[i, 0]), float(self._pos[i, 1]), self._swarm[i],
                     float(np.hypot(dx, dy)))
            )  # fmt: skip
        seen.sort(key=lambda s: s.distance)
        return seen[:limit]

    def __len__(self) -> int:
        self._build()
        return len(self._ids)
