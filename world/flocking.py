"""Boids flocking, vectorised: the update rule of Mesa's `boid_flockers` example.

Each boid looks at its neighbours within `vision` (itself excluded, distance <= vision, the
minimum image on a torus) and, when it has any, turns its heading by

    (cohere * sum(offsets) - separate * sum(offsets closer than separation)
     + match * sum(neighbour headings)) / number of neighbours

where an offset is neighbour position minus own position. The heading is then renormalised
and the boid moves `speed` along it. A boid without neighbours keeps its heading as it is (not
renormalised, as in Mesa) and moves along it. This is Mesa 3.x's `Boid.step` term for term.

One difference is deliberate: Mesa activates the boids one after another in a random order
(`shuffle_do`), so a boid sees the already-moved state of those before it; `flock_step` updates
every boid from the same snapshot (synchronous update), which is what a vectorised kernel and a
sharded world can reproduce. Per boid, from the same state, the two agree to rounding.

Neighbour pairs come from a cell list in numpy (cells one vision wide, a half stencil, ghost
copies of the edge cells for the torus), which measured 2-3x faster than
`cKDTree.query_pairs` (output_type="ndarray") at 10,000 boids and far faster than
`sparse_distance_matrix` or `query_ball_point`; the k-d tree (`boxsize` on a torus) remains
for a torus under three cells wide and for sparse open space. Per-pair terms are summed onto
both boids of each pair with `np.bincount` (faster than `np.add.at`). `benchmarks/flocking.py`
measures the kernel against Mesa; `flock_step_reference` is the plain O(n^2) version the tests
check it against.
"""

from __future__ import annotations

from dataclasses import dataclass

# scipy (below) ships no type information: its imports are ignored, with `unused-ignore`
# in case a mypy override for scipy is added.
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree  # type: ignore[import-untyped, unused-ignore]

__all__ = ["BoundsTuple", "FlockParams", "confine", "flock_step", "flock_step_reference"]

BoundsTuple = tuple[float, float, float, float]
"""An axis-aligned rectangle (x0, y0, x1, y1), with x0 <= x < x1 and y0 <= y < y1."""

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class FlockParams:
    """The factors of the boids rule; the defaults are those of Mesa's `BoidFlockers` model.

    speed: distance moved per step. vision: neighbour radius (inclusive). separation: a
    neighbour closer than this (exclusive) pushes the boid away. cohere, separate, match: the
    weights of cohesion, separation and alignment.
    """

    speed: float = 1.0
    vision: float = 10.0
    separation: float = 2.0
    cohere: float = 0.03
    separate: float = 0.015
    match: float = 0.05

    def __post_init__(self) -> None:
        if not self.vision > 0:
            raise ValueError(f"vision must be > 0, got {self.vision}")
        if self.separation < 0 or self.speed < 0:
            raise ValueError("speed and separation must be >= 0")


def flock_step(
    pos: FloatArray,
    vel: FloatArray,
    params: FlockParams,
    *,
    bounds: BoundsTuple | None = None,
    torus: bool = False,
    halo_pos: FloatArray | None = None,
    halo_vel: FloatArray | None = None,
) -> None:
    """Advance the boids at `pos` with headings `vel` (both (n, 2) float64) one step, in place.

    `halo_pos`/`halo_vel` (m, 2) are boids owned elsewhere (across a district border): they
    are neighbours of the n boids but are not moved. With `torus` the space wraps around
    `bounds` (required); without it, `bounds` (if given) are walls that reflect the heading and
    clamp the position inside.
    """
    n, origin, size = _prepare(pos, vel, bounds, torus)
    if n == 0:
        return
    all_pos, all_vel = _with_halo(pos, vel, halo_pos, halo_vel)
    if size is not None and origin is not None:
        local = _wrap(all_pos - origin, size)
    else:  # the search wants coordinates >= 0; walls do not bound the halo
        local = all_pos - all_pos.min(axis=0)
    pairs = _neighbour_pairs(local, params.vision, size)
    a, b, dx, dy = pairs.a, pairs.b, pairs.dx, pairs.dy
    sep2 = params.separation * params.separation
    weight = np.where(dx * dx + dy * dy < sep2, params.cohere - params.separate, params.cohere)
    dx *= weight
    dy *= weight
    # The point a sees +offset and b's heading; b sees -offset and a's heading.
    ends = np.concatenate((a, b))
    heading = all_vel[pairs.rows] * params.match
    hx, hy = heading[:, 0], heading[:, 1]
    points = len(pairs.rows)
    count = np.bincount(ends, minlength=points)
    turn_x = np.bincount(ends, np.concatenate((dx + hx[b], hx[a] - dx)), minlength=points)
    turn_y = np.bincount(ends, np.concatenate((dy + hy[b], hy[a] - dy)), minlength=points)
    if not pairs.identity:  # fold the search points (sorted, ghost copies) onto the boids
        total = len(all_pos)
        count = np.bincount(pairs.rows, count, minlength=total)
        turn_x = np.bincount(pairs.rows, turn_x, minlength=total)
        turn_y = np.bincount(pairs.rows, turn_y, minlength=total)
    count = count[:n]
    seen = count > 0
    inv = np.divide(1.0, count, out=np.zeros(n), where=seen)
    vel[:, 0] += turn_x[:n] * inv
    vel[:, 1] += turn_y[:n] * inv
    _renormalise(vel, seen)
    _move(pos, vel, params.speed, bounds, origin, size)


def flock_step_reference(
    pos: FloatArray,
    vel: FloatArray,
    params: FlockParams,
    *,
    bounds: BoundsTuple | None = None,
    torus: bool = False,
    halo_pos: FloatArray | None = None,
    halo_vel: FloatArray | None = None,
) -> None:
    """The same step as `flock_step` by an all-pairs O(n^2) computation (for tests)."""
    n, _, size = _prepare(pos, vel, bounds, torus)
    if n == 0:
        return
    others = pos if halo_pos is None else np.concatenate((pos, halo_pos))
    headings = vel if halo_vel is None else np.concatenate((vel, halo_vel))
    delta = others[None, :, :] - pos[:, None, :]  # (n, n + m, 2): neighbour minus self
    if size is not None:
        flip = delta - np.sign(delta) * size
        delta = np.where(np.abs(delta) < np.abs(flip), delta, flip)
    dist = np.sqrt((delta**2).sum(axis=2))
    near = dist <= params.vision
    near[np.arange(n), np.arange(n)] = False
    count = near.sum(axis=1)
    cohere = (delta * near[..., None]).sum(axis=1) * params.cohere
    too_close = near & (dist < params.separation)
    separate = -(delta * too_close[..., None]).sum(axis=1) * params.separate
    match = (headings[None, :, :] * near[..., None]).sum(axis=1) * params.match
    seen = count > 0
    vel[seen] += (cohere + separate + match)[seen] / count[seen, None]
    _renormalise(vel, seen)
    origin = None if bounds is None else np.array(bounds[:2], dtype=np.float64)
    _move(pos, vel, params.speed, bounds, origin, size)


def _prepare(
    pos: FloatArray, vel: FloatArray, bounds: BoundsTuple | None, torus: bool
) -> tuple[int, FloatArray | None, FloatArray | None]:
    """Check the arrays; return n, the bounds' origin and, on a torus, its size."""
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape != vel.shape:
        raise ValueError(f"pos and vel must both be (n, 2), got {pos.shape} and {vel.shape}")
    if torus and bounds is None:
        raise ValueError("a torus needs bounds")
    if bounds is None:
        return len(pos), None, None
    x0, y0, x1, y1 = bounds
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"bounds need x1 > x0 and y1 > y0, got {bounds}")
    origin = np.array((x0, y0), dtype=np.float64)
    size = np.array((x1 - x0, y1 - y0), dtype=np.float64) if torus else None
    return len(pos), origin, size


def _with_halo(
    pos: FloatArray, vel: FloatArray, halo_pos: FloatArray | None, halo_vel: FloatArray | None
) -> tuple[FloatArray, FloatArray]:
    """The boids followed by the halo boids (positions, headings)."""
    if halo_pos is None or len(halo_pos) == 0:
        return pos, vel
    if halo_vel is None or halo_vel.shape != halo_pos.shape or halo_pos.shape[1:] != (2,):
        raise ValueError("halo_pos and halo_vel must both be (m, 2)")
    return np.concatenate((pos, halo_pos)), np.concatenate((vel, halo_vel))


def _wrap(local: FloatArray, size: FloatArray) -> FloatArray:
    """Wrap coordinates relative to the origin into [0, size), in place (returned)."""
    below, above = local < 0, local >= size
    if not (below.any() or above.any()):
        return local
    local += below * size  # cheaper than np.mod for the usual step across one edge
    local -= above * size
    if ((local < 0) | (local >= size)).any():  # further than a whole size (or rounded onto it)
        np.mod(local, size, out=local)
        local[local >= size] = 0.0  # np.mod(-1e-17, s) rounds to s itself
    return local


def _renormalise(vel: FloatArray, rows: NDArray[np.bool_]) -> None:
    """Scale the headings of `rows` to unit length (a zero heading stays zero)."""
    norm = np.sqrt(vel[:, 0] * vel[:, 0] + vel[:, 1] * vel[:, 1])
    scale = np.divide(1.0, norm, out=np.ones_like(norm), where=rows & (norm > 0))
    vel *= scale[:, None]


@dataclass(frozen=True, slots=True)
class _Pairs:
    """Pairs of search points within the radius, each once, and their offsets.

    The search points are the boids, maybe reordered and with ghost copies (torus images):
    `rows` maps each search point to its boid, `identity` says it is the identity.
    """

    rows: IndexArray
    identity: bool
    a: IndexArray
    b: IndexArray
    dx: FloatArray  # x of b minus x of a (the minimum image on a torus)
    dy: FloatArray


def _neighbour_pairs(local: FloatArray, radius: float, size: FloatArray | None) -> _Pairs:
    """Every pair of points of `local` (>= 0; within [0, size) on a torus) at most `radius` apart.

    A cell list of cells at least `radius` wide, walked with a half stencil (own cell, right,
    and the three above), finds each pair once; on a torus, ghost copies of the edge cells
    beyond the right, left and top edges carry the wrap-around. A torus narrower than three
    cells, or a sparse open space (more cells than points), goes to a k-d tree instead.
    """
    cell = radius * (1 + 1e-9)  # a margin, so that rounding cannot split a pair two cells apart
    n = len(local)
    x, y = local[:, 0], local[:, 1]
    if size is not None:
        nx, ny = int(size[0] // cell), int(size[1] // cell)
        if nx < 3 or ny < 3:
            return _tree_pairs(local, radius, size)
        cx = np.minimum((x * (nx / size[0])).astype(np.intp), nx - 1)
        cy = np.minimum((y * (ny / size[1])).astype(np.intp), ny - 1)
        left, right = np.flatnonzero(cx == 0), np.flatnonzero(cx == nx - 1)
        bottom = np.flatnonzero(cy == 0)
        corner_l, corner_r = left[cy[left] == 0], right[cy[right] == 0]
        rows = np.concatenate((np.arange(n), left, right, bottom, corner_l, corner_r))
        wx, wy = float(size[0]), float(size[1])
        x = np.concatenate((x, x[left] + wx, x[right] - wx, x[bottom], x[corner_l] + wx))
        x = np.concatenate((x, local[corner_r, 0] - wx))
        y = np.concatenate((y, y[left], y[right], y[bottom] + wy, y[corner_l] + wy))
        y = np.concatenate((y, local[corner_r, 1] + wy))
        k = (len(left), len(right), len(bottom), len(corner_l), len(corner_r))
        edge_x = [np.full(k[0], nx), np.full(k[1], -1), cx[bottom], np.full(k[3], nx)]
        cx = np.concatenate((cx, *edge_x, np.full(k[4], -1)))
        cy = np.concatenate((cy, cy[left], cy[right], np.full(k[2] + k[3] + k[4], ny)))
        return _grid_pairs(x, y, cx, cy, nx + 2, ny + 1, rows, n, radius)
    extent = local.max(axis=0) if n else np.zeros(2)
    nx, ny = int(extent[0] // cell) + 1, int(extent[1] // cell) + 1
    if (nx + 2) * (ny + 1) > 4 * n + 1024:
        return _tree_pairs(local, radius, None)
    cx, cy = (x * (1 / cell)).astype(np.intp), (y * (1 / cell)).astype(np.intp)
    return _grid_pairs(x, y, cx, cy, nx + 2, ny + 1, np.arange(n), n, radius)


def _grid_pairs(
    x: FloatArray,
    y: FloatArray,
    cx: IndexArray,
    cy: IndexArray,
    width: int,
    height: int,
    rows: IndexArray,
    looking: int,
    radius: float,
) -> _Pairs:
    """The pairs found by the first `looking` points in a grid padded by a column each side.

    Cells are column cx + 1 (cx in -1..width-2) and row cy (cy in 0..height-1); the points
    after the first `looking` (ghosts) are only looked at.
    """
    key = cy * width + (cx + 1)
    cells = width * height
    order = np.argsort(key.astype(np.uint16) if cells <= 1 << 16 else key, kind="stable")
    counts = np.bincount(key, minlength=cells)
    starts = np.cumsum(counts) - counts
    key = key[order]
    points = len(order)
    # Per point and stencil cell: where the candidate run starts, and how long it is.
    first = np.empty((5, points), dtype=np.intp)
    length = np.empty((5, points), dtype=np.intp)
    first[0] = np.arange(1, points + 1)  # the later points of its own cell
    length[0] = starts[key] + counts[key] - first[0]
    for q, step in enumerate((1, width - 1, width, width + 1), start=1):
        other = np.minimum(key + step, cells - 1)  # only a ghost could overflow, see below
        first[q] = starts[other]
        length[q] = counts[other]
    length[:, np.flatnonzero(order >= looking)] = 0
    run_first, run_length = first.ravel(), length.ravel()
    ends = np.cumsum(run_length)
    total = int(ends[-1])
    # The run of each candidate (runs laid end to end), then its partner b and its point a.
    run = np.cumsum(np.bincount(ends[:-1], minlength=total + 1)[:total])
    b = np.arange(total) + (run_first + run_length - ends)[run]
    a = np.tile(np.arange(points), 5)[run]
    xs, ys = x[order], y[order]
    dx = xs[b] - xs[a]
    dy = ys[b] - ys[a]
    # flatnonzero + take: boolean indexing is several times slower on a random mask.
    near = np.flatnonzero(dx * dx + dy * dy <= radius * radius)
    return _Pairs(rows[order], False, a.take(near), b.take(near), dx.take(near), dy.take(near))


def _tree_pairs(local: FloatArray, radius: float, size: FloatArray | None) -> _Pairs:
    """The pairs by a k-d tree (periodic with `size`)."""
    tree = cKDTree(local, boxsize=size, balanced_tree=False, compact_nodes=False)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    dx = local[b, 0] - local[a, 0]
    dy = local[b, 1] - local[a, 1]
    if size is not None:
        dx -= size[0] * np.rint(dx / size[0])
        dy -= size[1] * np.rint(dy / size[1])
    return _Pairs(np.arange(len(local)), True, a, b, dx, dy)


def _move(
    pos: FloatArray,
    vel: FloatArray,
    speed: float,
    bounds: BoundsTuple | None,
    origin: FloatArray | None,
    size: FloatArray | None,
) -> None:
    """Move along the headings, then wrap (torus) or reflect and clamp (walls)."""
    pos += vel * speed
    if bounds is None or origin is None:
        return
    if size is not None:
        if origin.any():
            pos -= origin
            _wrap(pos, size)
            pos += origin
        else:
            _wrap(pos, size)
        return
    confine(pos, vel, bounds)


def confine(pos: FloatArray, vel: FloatArray, bounds: BoundsTuple) -> None:
    """Keep points inside walls: reflect the velocity of a point past a wall, clamp it inside."""
    lo = np.array(bounds[:2], dtype=np.float64)
    hi = np.nextafter(np.array(bounds[2:], dtype=np.float64), lo)  # the upper edge is open
    below = pos < lo
    above = pos > hi
    if below.any() or above.any():
        np.copyto(vel, np.abs(vel), where=below)
        np.copyto(vel, -np.abs(vel), where=above)
        np.clip(pos, lo, hi, out=pos)
