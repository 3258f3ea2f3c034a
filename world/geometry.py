"""Regions of a world: grid layouts, locating points, splitting and merging, halo neighbours.

A world is a rectangle cut into regions (axis-aligned rectangles that tile it). Each region is
owned by one district server; the orchestrator publishes the assignment as a `RegionMap`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from world.payloads import Bounds, RegionInfo, RegionMap

__all__ = [
    "RegionIndex",
    "grid_layout",
    "halo_regions",
    "merge",
    "siblings",
    "split",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


def grid_layout(
    bounds: Bounds, cols: int, rows: int, districts: Sequence[str], names: Sequence[str] = ()
) -> list[RegionInfo]:
    """`cols` x `rows` equal regions, dealt to `districts` in row-major order.

    Regions are named `names[i]` when given (a city's district names), else `r{row}-{col}`.
    """
    if cols < 1 or rows < 1:
        raise ValueError("a grid needs at least one column and one row")
    if not districts:
        raise ValueError("a grid needs at least one district server")
    width = (bounds.x1 - bounds.x0) / cols
    height = (bounds.y1 - bounds.y0) / rows
    regions = []
    for i in range(rows * cols):
        row, col = divmod(i, cols)
        x0 = bounds.x0 + col * width
        y0 = bounds.y0 + row * height
        x1 = bounds.x1 if col == cols - 1 else x0 + width
        y1 = bounds.y1 if row == rows - 1 else y0 + height
        name = names[i] if i < len(names) else f"r{row}-{col}"
        regions.append(
            RegionInfo(
                id=name,
                bounds=Bounds(x0=x0, y0=y0, x1=x1, y1=y1),
                district=districts[i % len(districts)],
            )
        )
    return regions


class RegionIndex:
    """Vectorised point location over a region map (a handful of regions, many points)."""

    def __init__(self, regions: Iterable[RegionInfo]) -> None:
        self.regions = list(regions)
        self.ids = [r.id for r in self.regions]
        self.position = {r.id: i for i, r in enumerate(self.regions)}
        self.boxes = np.array([r.bounds.as_tuple() for r in self.regions], dtype=np.float64)
        if not len(self.regions):
            self.boxes = np.zeros((0, 4), dtype=np.float64)

    def locate(self, pos: FloatArray) -> IntArray:
        """For each point (n, 2), the index of the region containing it, or -1 for none."""
        out = np.full(len(pos), -1, dtype=np.intp)
        if not len(pos):
            return out
        x = pos[:, 0]
        y = pos[:, 1]
        for i, (x0, y0, x1, y1) in enumerate(self.boxes):
            inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
            out[inside] = i
        return out

    def region_at(self, x: float, y: float) -> RegionInfo | None:
        index = int(self.locate(np.array([[x, y]], dtype=np.float64))[0])
        return self.regions[index] if index >= 0 else None

    def district_of(self, region: str) -> str:
        return self.regions[self.position[region]].district


def split(region: RegionInfo, first: str, second: str) -> tuple[RegionInfo, RegionInfo]:
    """Cut a region in two along its longer side; both halves remember their parent."""
    b = region.bounds
    if b.x1 - b.x0 >= b.y1 - b.y0:
        mid = (b.x0 + b.x1) / 2
        one = Bounds(x0=b.x0, y0=b.y0, x1=mid, y1=b.y1)
        two = Bounds(x0=mid, y0=b.y0, x1=b.x1, y1=b.y1)
    else:
        mid = (b.y0 + b.y1) / 2
        one = Bounds(x0=b.x0, y0=b.y0, x1=b.x1, y1=mid)
        two = Bounds(x0=b.x0, y0=mid, x1=b.x1, y1=b.y1)
    return (
        RegionInfo(id=first, bounds=one, district=region.district, parent=region.id),
        RegionInfo(id=second, bounds=two, district=region.district, parent=region.id),
    )


def siblings(a: RegionInfo, b: RegionInfo) -> bool:
    """Two halves of one split, whose union is their parent's rectangle."""
    return a.parent is not None and a.parent == b.parent and a.id != b.id


def merge(a: RegionInfo, b: RegionInfo) -> RegionInfo:
    """The parent region back from its two halves (owned by `a`'s district)."""
    if not siblings(a, b) or a.parent is None:
        raise ValueError(f"regions {a.id} and {b.id} are not the two halves of one region")
    x0 = min(a.bounds.x0, b.bounds.x0)
    y0 = min(a.bounds.y0, b.bounds.y0)
    x1 = max(a.bounds.x1, b.bounds.x1)
    y1 = max(a.bounds.y1, b.bounds.y1)
    return RegionInfo(
        id=a.parent, bounds=Bounds(x0=x0, y0=y0, x1=x1, y1=y1), district=a.district, parent=None
    )


def halo_regions(
    region: RegionInfo, regions: RegionMap | Sequence[RegionInfo], margin: float
) -> list[RegionInfo]:
    """The other regions within `margin` of `region` (whose entities its agents can see)."""
    items = regions.regions if isinstance(regions, RegionMap) else regions
    b = region.bounds
    near = []
    for other in items:
        if other.id == region.id:
            continue
        o = other.bounds
        if (
            o.x0 <= b.x1 + margin
            and o.x1 >= b.x0 - margin
            and o.y0 <= b.y1 + margin
            and o.y1 >= b.y0 - margin
        ):
            near.append(other)
    return near
