"""Swarm arithmetic without I/O: new members' ids and places, despawns spread over districts,
and the status figures (updates per second, latency, coupling).

Coupling intensity is the swarm's polarisation (Vicsek's order parameter): the length of the
mean of its members' unit headings, from 0 (each goes its own way) to 1 (all move as one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from world.geometry import RegionIndex
from world.payloads import EntityColumns, RegionMap, StepReport, SwarmSpec

__all__ = ["coupling", "despawn_plan", "spawn_plan"]


def spawn_plan(
    spec: SwarmSpec, first: int, count: int, region_map: RegionMap, chunk: int, seed: int = 0
) -> dict[str, list[EntityColumns]]:
    """Members `first .. first+count-1` of a swarm, placed uniformly in its bounds (seeded by
    name and index, so a retried plan places them the same), grouped by the district server
    that owns their spot, in messages of at most `chunk`."""
    if count <= 0:
        return {}
    rng = np.random.default_rng([seed, first, count, *spec.name.encode()])
    b = spec.bounds
    world = region_map.bounds
    x0, y0 = max(b.x0, world.x0), max(b.y0, world.y0)
    x1, y1 = min(b.x1, world.x1), min(b.y1, world.y1)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"swarm {spec.name!r}: its bounds lie outside the world")
    pos = np.column_stack((rng.uniform(x0, x1, count), rng.uniform(y0, y1, count)))
    angle = rng.uniform(0, 2 * math.pi, count)
    vel = np.column_stack((np.cos(angle), np.sin(angle)))
    index = RegionIndex(region_map.regions)
    where = index.locate(pos)
    owners = np.array([r.district for r in index.regions], dtype=object)
    ids = [f"{spec.name}-{k:06d}" for k in range(first, first + count)]
    plan: dict[str, list[EntityColumns]] = {}
    pos = np.round(pos, 3)
    vel = np.round(vel, 4)
    for district in sorted(set(owners[where[where >= 0]].tolist())):
        rows = np.flatnonzero(owners[where] == district)
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            plan.setdefault(district, []).append(
                EntityColumns.model_construct(
                    id=[ids[i] for i in r.tolist()],
                    x=pos[r, 0].tolist(),
                    y=pos[r, 1].tolist(),
                    vx=vel[r, 0].tolist(),
                    vy=vel[r, 1].tolist(),
                    swarm=[spec.name] * len(r),
                    ov=[0] * len(r),
                )
            )
    return plan


def despawn_plan(counts: Mapping[str, int], remove: int) -> dict[str, int]:
    """How many members each district removes so that `remove` go in all, fullest first."""
    plan: dict[str, int] = {}
    left = remove
    total = sum(counts.values())
    if total <= 0 or remove <= 0:
        return plan
    for district, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        share = min(n, math.ceil(remove * n / total), left)
        if share > 0:
            plan[district] = share
            left -= share
    for district, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if left <= 0:
            break
        extra = min(n - plan.get(district, 0), left)
        if extra > 0:
            plan[district] = plan.get(district, 0) + extra
            left -= extra
    return plan


def coupling(name: str, reports: Mapping[str, StepReport]) -> float:
    """The swarm's polarisation over every district's last report (0..1)."""
    sx = sy = 0.0
    n = 0
    for report in reports.values():
        heading = report.headings.get(name)
        count = report.swarms.get(name, 0)
        if heading and count:
            sx += heading[0]
            sy += heading[1]
            n += count
    return min(1.0, math.hypot(sx, sy) / n) if n else 0.0
