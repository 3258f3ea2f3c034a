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

Neighbours come from a cell list (cells at least one vision wide; on a torus the neighbour
cells wrap around) walked by a kernel compiled with numba: per boid, the 3 x 3 cells around
it, summing the terms as it goes. It measured about 3x faster than the same cell list in numpy
(a half stencil, pairs gathered into arrays and summed with `np.bincount`), which was itself
2-3x faster than `cKDTree.query_pairs`; in a flocking world the boids crowd together and the
numpy version's temporaries grew with the pairs. The k-d tree (`boxsize` on a torus), with the
terms summed in numpy, remains for a torus under three cells wide and for sparse open space.
The kernel is compiled once and cached on disk (numba's `cache=True`); `warm_up()` compiles it
before a district's first tick. `benchmarks/flocking.py` measures the kernel against Mesa;
`flock_step_reference` is the plain O(n^2) version the tests check it against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# scipy (below) ships no type information: its imports are ignored, with `unused-ignore`
# in case a mypy override for scipy is added.
import numpy as np
from numba import njit  # type: ignore[import-untyped, unused-ignore]
from numpy.typing import NDArray
from scipy.spatial import cKDTree  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "BoundsTuple",
    "FlockParams",
    "confine",
    "flock_step",
    "flock_step_reference",
    "warm_up",
]

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
    turn_x, turn_y, count = _turns(local, all_vel, n, params, size)
    seen = count > 0
    inv = np.divide(1.0, count, out=np.zeros(n), where=seen)
    vel[:, 0] += turn_x * inv
    vel[:, 1] += turn_y * inv
    _renormalise(vel, seen)
    _move(pos, vel, params.speed, bounds, origin, size)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now, not in the first tick."""
    pos = np.array([[0.5, 0.5], [1.0, 1.0], [30.0, 30.0], [5.0, 29.0]])
    vel = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    flock_step(pos, vel, FlockParams(), bounds=(0.0, 0.0, 40.0, 40.0), torus=True)
    flock_step(pos, vel, FlockParams(), bounds=(0.0, 0.0, 40.0, 40.0))


def _turns(
    local: FloatArray, headings: FloatArray, n: int, params: FlockParams, size: FloatArray | None
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """Per boid (the first `n` points of `local`): the sums of the turn's x and y terms over its
    neighbours, and how many it has."""
    if not np.isfinite(local).all():  # a NaN would index outside the kernel's cells
        raise ValueError("boid positions must be finite")
    radius = params.vision
    cell = radius * (1 + 1e-9)  # a margin, so that rounding cannot split a pair two cells apart
    x, y = local[:, 0], local[:, 1]
    if size is not None:
        nx, ny = int(size[0] // cell), int(size[1] // cell)
        if nx >= 3 and ny >= 3:  # cells a little wider than `cell`, so that they tile the torus
            cx = np.minimum((x * (nx / size[0])).astype(np.intp), nx - 1)
            cy = np.minimum((y * (ny / size[1])).astype(np.intp), ny - 1)
            return _cell_kernel(x, y, headings, cx, cy, nx, ny, n, True, size, params)
    else:
        extent = local.max(axis=0)  # never empty: flock_step returns early for no boids
        nx, ny = int(extent[0] // cell) + 1, int(extent[1] // cell) + 1
        if nx * ny <= 4 * len(local) + 1024:  # not a sparse open space
            cx, cy = (x * (1 / cell)).astype(np.intp), (y * (1 / cell)).astype(np.intp)
            cx, cy = np.minimum(cx, nx - 1), np.minimum(cy, ny - 1)
            return _cell_kernel(x, y, headings, cx, cy, nx, ny, n, False, np.ones(2), params)
    return _tree_turns(local, headings, n, params, size)


def _cell_kernel(
    x: FloatArray,
    y: FloatArray,
    headings: FloatArray,
    cx: IndexArray,
    cy: IndexArray,
    nx: int,
    ny: int,
    n: int,
    torus: bool,
    size: FloatArray,
    params: FlockParams,
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    turn_x, turn_y = np.zeros(n), np.zeros(n)
    count = np.zeros(n, dtype=np.int64)
    _walk_cells(
        np.ascontiguousarray(x),
        np.ascontiguousarray(y),
        np.ascontiguousarray(headings[:, 0]),
        np.ascontiguousarray(headings[:, 1]),
        cy.astype(np.int64) * nx + cx,
        nx,
        ny,
        n,
        torus,
        float(size[0]),
        float(size[1]),
        params.vision * params.vision,
        params.separation * params.separation,
        params.cohere,
        params.separate,
        params.match,
        turn_x,
        turn_y,
        count,
    )
    return turn_x, turn_y, count


def _compiled(function: Any) -> Any:
    """`function` compiled by numba, cached on disk where numba finds a writable place (beside
    the source, or `NUMBA_CACHE_DIR`, or the user's cache); without one, compiled at each start
    (numba refuses `cache=True` when it has nowhere to write)."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:
        return njit(nogil=True)(function)


@_compiled
def _neighbour(index: int, cells: int, torus: bool) -> int:  # pragma: no cover - compiled
    """A cell index one beyond an edge at most: wrapped on a torus, -1 past a wall."""
    if torus:
        return (index + cells) % cells
    return index if 0 <= index < cells else -1


@_compiled
def _nearest(d: float, width: float, half: float) -> float:  # pragma: no cover - compiled
    """An offset on a torus `width` wide as its minimum image (it is within one width)."""
    if d > half:
        return d - width
    if d < -half:
        return d + width
    return d


@_compiled
def _walk_cells(
    x: FloatArray,
    y: FloatArray,
    hx: FloatArray,
    hy: FloatArray,
    key: NDArray[np.int64],
    nx: int,
    ny: int,
    n: int,
    torus: bool,
    wx: float,
    wy: float,
    r2: float,
    sep2: float,
    cohere: float,
    separate: float,
    match: float,
    turn_x: FloatArray,
    turn_y: FloatArray,
    count: NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; the tests check it against the reference
    """The kernel: points sorted by cell (a counting sort), then each of the first `n` walks
    the 3 x 3 cells around its own (wrapping on a torus) and sums its neighbours' terms."""
    m = len(x)
    cells = nx * ny
    starts = np.zeros(cells + 1, dtype=np.int64)
    for i in range(m):
        starts[key[i] + 1] += 1
    for c in range(cells):
        starts[c + 1] += starts[c]
    fill = starts[:-1].copy()
    order = np.empty(m, dtype=np.int64)
    for i in range(m):
        c = key[i]
        order[fill[c]] = i
        fill[c] += 1
    sx, sy, shx, shy = x[order], y[order], hx[order], hy[order]
    half_x, half_y = wx / 2, wy / 2
    for k in range(m):
        i = order[k]
        if i >= n:
            continue  # a halo point: looked at, not moved
        xi, yi = sx[k], sy[k]
        ci, cj = key[i] % nx, key[i] // nx
        tx = 0.0
        ty = 0.0
        seen = 0
        for dj in range(-1, 2):
            row = _neighbour(cj + dj, ny, torus)
            if row < 0:
                continue
            for di in range(-1, 2):
                col = _neighbour(ci + di, nx, torus)
                if col < 0:
                    continue
                c = row * nx + col
                for q in range(starts[c], starts[c + 1]):
                    if q == k:
                        continue
                    dx = sx[q] - xi
                    dy = sy[q] - yi
                    if torus:  # the minimum image
                        dx = _nearest(dx, wx, half_x)
                        dy = _nearest(dy, wy, half_y)
                    d2 = dx * dx + dy * dy
                    if d2 <= r2:
                        w = cohere - separate if d2 < sep2 else cohere
                        tx += w * dx + match * shx[q]
                        ty += w * dy + match * shy[q]
                        seen += 1
        turn_x[i] = tx
        turn_y[i] = ty
        count[i] = seen


def _tree_turns(
    local: FloatArray, headings: FloatArray, n: int, params: FlockParams, size: FloatArray | None
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """`_turns` by a k-d tree's pairs (periodic with `size`), summed onto both ends in numpy."""
    tree = cKDTree(local, boxsize=size, balanced_tree=False, compact_nodes=False)
    pairs = tree.query_pairs(params.vision, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    dx = local[b, 0] - local[a, 0]
    dy = local[b, 1] - local[a, 1]
    if size is not None:
        dx -= size[0] * np.rint(dx / size[0])
        dy -= size[1] * np.rint(dy / size[1])
    sep2 = params.separation * params.separation
    weight = np.where(dx * dx + dy * dy < sep2, params.cohere - params.separate, params.cohere)
    dx *= weight
    dy *= weight
    # The point a sees +offset and b's heading; b sees -offset and a's heading.
    ends = np.concatenate((a, b))
    hx, hy = headings[:, 0] * params.match, headings[:, 1] * params.match
    points = len(local)
    count = np.bincount(ends, minlength=points)[:n].astype(np.int64, copy=False)
    turn_x = np.bincount(ends, np.concatenate((dx + hx[b], hx[a] - dx)), minlength=points)
    turn_y = np.bincount(ends, np.concatenate((dy + hy[b], hy[a] - dy)), minlength=points)
    as_float = np.float64  # bincount with weights: float64 already (no copy)
    return turn_x[:n].astype(as_float, copy=False), turn_y[:n].astype(as_float, copy=False), count


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
