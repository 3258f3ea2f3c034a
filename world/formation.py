"""Formations: slot layouts, assigning agents to slots, and steering agents onto them.

A layout is built in the formation's own frame, where +x is `heading` (the direction of
travel) and +y its left, then centred (the centroid of the slots is `center`), rotated by
`heading` and moved to `center`:

- line: a line abreast, across the heading, `spacing` apart;
- grid: rows of ceil(sqrt(n)) abreast, one behind the other, `spacing` apart both ways;
- circle: evenly round a circle whose neighbouring slots are `spacing` apart (one slot sits on
  the centre, two are a diameter apart);
- wedge: a V pointing along the heading, a leader then pairs on two arms swept back 45 degrees,
  `spacing` apart along each arm.

Neighbouring slots are `spacing` apart and no two slots are closer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

# scipy (below) ships no type information: its imports are ignored, with `unused-ignore`
# in case a mypy override for scipy is added.
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped, unused-ignore]
from scipy.spatial.distance import cdist  # type: ignore[import-untyped, unused-ignore]

__all__ = ["EXACT_LIMIT", "SHAPES", "Shape", "assign_slots", "formation_targets", "steer_to"]

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

Shape = Literal["line", "grid", "circle", "wedge"]
SHAPES: tuple[Shape, ...] = get_args(Shape)

EXACT_LIMIT = 2000
"""Up to this many agents `assign_slots` solves the assignment exactly (about 0.5 s at 2000)."""


def formation_targets(
    shape: Shape,
    n: int,
    center: tuple[float, float],
    spacing: float,
    heading: float = 0.0,
) -> FloatArray:
    """The n slots (n, 2) of a formation `shape` around `center`, facing `heading` (radians)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown formation shape {shape!r}; expected one of {SHAPES}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing}")
    if n == 0:
        return np.zeros((0, 2))
    local = _LAYOUTS[shape](n, spacing)
    local -= local.mean(axis=0)
    cos, sin = math.cos(heading), math.sin(heading)
    rotation = np.array([[cos, sin], [-sin, cos]])  # row vectors: p @ R turns p by heading
    slots: FloatArray = local @ rotation + np.asarray(center, dtype=np.float64)
    return slots


def assign_slots(
    pos: FloatArray, targets: FloatArray, *, exact_limit: int = EXACT_LIMIT
) -> IndexArray:
    """For each agent, the index of its slot in `targets`: each slot once, total distance low.

    Up to `exact_limit` agents the sum of distances is minimal (`linear_sum_assignment`);
    above it, agents and slots are both sorted along the slots' main axis, cut into strips of
    a row of slots, and sorted across within each strip; the i-th agent in that order takes the
    i-th slot (O(n log n), near the optimum when the agents are near their formation).
    """
    if pos.shape != targets.shape or pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"pos and targets must both be (n, 2), got {pos.shape}, {targets.shape}")
    n = len(pos)
    if n <= exact_limit:
        agents, slots = linear_sum_assignment(cdist(pos, targets))
        out = np.empty(n, dtype=np.intp)
        out[agents] = slots
        return out
    # Strips as wide as a row of the slots: about sqrt(n / aspect), one slot for a line.
    axis, aspect = _main_axes(targets)
    width = max(1, round(math.sqrt(n / aspect)))
    out = np.empty(n, dtype=np.intp)
    out[_strip_order(pos, axis, width)] = _strip_order(targets, axis, width)
    return out


def steer_to(
    pos: FloatArray, vel: FloatArray, targets: FloatArray, *, max_speed: float, gain: float
) -> None:
    """Move each agent toward its target, in place, and set `vel` to the step it took.

    The step is `gain` times the offset to the target, at most `max_speed` long and never
    past the target: an agent arrives without overshooting and then stays (zero step).
    """
    if not (pos.shape == vel.shape == targets.shape):
        raise ValueError("pos, vel and targets must have the same shape")
    if max_speed < 0 or not gain > 0:
        raise ValueError("max_speed must be >= 0 and gain > 0")
    offset = targets - pos
    dist = np.sqrt(offset[:, 0] * offset[:, 0] + offset[:, 1] * offset[:, 1])
    step = np.minimum(np.minimum(dist * gain, max_speed), dist)
    scale = np.divide(step, dist, out=np.zeros_like(dist), where=dist > 0)
    np.multiply(offset, scale[:, None], out=vel)
    pos += vel


def _line(n: int, spacing: float) -> FloatArray:
    out = np.zeros((n, 2))
    out[:, 1] = np.arange(n) * spacing
    return out


def _grid(n: int, spacing: float) -> FloatArray:
    cols = math.ceil(math.sqrt(n))
    k = np.arange(n)
    return np.column_stack((-(k // cols) * spacing, (k % cols) * spacing)).astype(np.float64)


def _circle(n: int, spacing: float) -> FloatArray:
    if n == 1:
        return np.zeros((1, 2))
    radius = spacing / (2 * math.sin(math.pi / n))  # the chord between neighbours is `spacing`
    angle = np.arange(n) * (2 * math.pi / n)
    return np.column_stack((np.cos(angle), np.sin(angle))) * radius


def _wedge(n: int, spacing: float) -> FloatArray:
    k = np.arange(n)
    rank = (k + 1) // 2  # the leader is rank 0, then two slots per rank
    side = np.where(k % 2 == 1, 1.0, -1.0)
    arm = spacing * math.sqrt(0.5)
    return np.column_stack((-rank * arm, side * rank * arm))


_LAYOUTS: dict[str, Callable[[int, float], FloatArray]] = {
    "circle": _circle,
    "grid": _grid,
    "line": _line,
    "wedge": _wedge,
}


def _main_axes(points: FloatArray) -> tuple[FloatArray, float]:
    """The unit direction along which the points spread most, and how many times wider that
    spread is than the spread across it (inf for points on a line)."""
    centred = points - points.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    axis: FloatArray = vectors[:, -1]
    aspect = math.sqrt(values[1] / values[0]) if values[0] > 1e-12 * values[1] else math.inf
    return axis, aspect


def _strip_order(points: FloatArray, axis: FloatArray, width: int) -> IndexArray:
    """Sort along `axis` into strips of `width` points, then across the axis within each."""
    n = len(points)
    along = points @ axis
    across = points @ np.array([-axis[1], axis[0]])
    rank = np.empty(n, dtype=np.intp)
    rank[np.argsort(along, kind="stable")] = np.arange(n)
    order: IndexArray = np.lexsort((across, rank // width))
    return order
