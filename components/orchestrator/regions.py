"""Changes to the region map, without I/O: drain a region into another's server, split, merge.

A changed map is published with a higher version; the district servers adopt it, and entities
now in a region another server owns move there by the ordinary hand-off protocol.
"""

from __future__ import annotations

from collections.abc import Mapping

from world.geometry import merge, siblings, split
from world.payloads import RegionInfo, RegionMap

__all__ = ["RegionError", "drain", "rebalance"]


class RegionError(ValueError):
    """An operation on regions that cannot be done (unknown region, same owner, ...)."""


def _find(region_map: RegionMap, region: str) -> RegionInfo:
    for info in region_map.regions:
        if info.id == region:
            return info
    known = ", ".join(sorted(r.id for r in region_map.regions))
    raise RegionError(f"unknown region {region!r}; regions: {known}")


def _with(region_map: RegionMap, regions: list[RegionInfo]) -> RegionMap:
    return region_map.model_copy(update={"regions": regions, "version": region_map.version + 1})


def drain(region_map: RegionMap, region: str, target: str) -> RegionMap:
    """Hand `region` (its area and so all its entities) to the server that owns `target`."""
    source = _find(region_map, region)
    into = _find(region_map, target)
    if source.id == into.id:
        raise RegionError(f"cannot drain region {region!r} into itself")
    if source.district == into.district:
        raise RegionError(
            f"regions {region!r} and {target!r} are both served by {source.district!r}: "
            "nothing to move"
        )
    regions = [
        r.model_copy(update={"district": into.district}) if r.id == source.id else r
        for r in region_map.regions
    ]
    return _with(region_map, regions)


def rebalance(
    region_map: RegionMap,
    counts: Mapping[str, int],
    *,
    split_above: int,
    merge_below: int,
    districts: list[str],
) -> RegionMap | None:
    """One rebalancing move, or None: split the fullest region over `split_above` (its second
    half goes to the least loaded district server), else merge two halves of one region whose
    entities together are under `merge_below`."""
    regions = list(region_map.regions)
    if split_above > 0:
        full = [r for r in regions if counts.get(r.id, 0) > split_above]
        if full:
            target = max(full, key=lambda r: counts.get(r.id, 0))
            first, second = split(target, f"{target.id}-a", f"{target.id}-b")
            load = {d: 0 for d in districts}
            for r in regions:
                if r.id != target.id:
                    load[r.district] = load.get(r.district, 0) + counts.get(r.id, 0)
            load[target.district] = load.get(target.district, 0) + counts.get(target.id, 0) // 2
            lightest = min(load, key=lambda d: (load[d], d))
            second = second.model_copy(update={"district": lightest})
            i = regions.index(target)
            return _with(region_map, [*regions[:i], first, second, *regions[i + 1 :]])
    if merge_below > 0:
        for a in regions:
            for b in regions:
                idle = counts.get(a.id, 0) + counts.get(b.id, 0) < merge_below
                if a.id < b.id and siblings(a, b) and idle:
                    whole = merge(a, b)
                    kept = [r for r in regions if r.id not in (a.id, b.id)]
                    return _with(region_map, [*kept, whole])
    return None
