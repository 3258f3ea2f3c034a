"""Behaviours: what moves the entities each tick, run in vectorised batches.

A `Behaviour` has an id, a `priority` (higher wins), a `cooldown` in ticks, a vectorised
`condition(view) -> bool per row` (None: always) and an `action(view, params, dt)` that
updates `view.pos` and `view.vel` in place. `BehaviourRegistry.step` splits the rows by
group (one `Group` per swarm); for each group that is not paused the candidates are the
group's own behaviour and every behaviour registered with `applies_to_all` (overrides such as
"return home when the battery is low"). Each row runs the highest-priority candidate whose
condition holds for it and that is not cooling down for it (ties: the group's own behaviour,
then registration order); rows are then run batch-wise, one call per behaviour and group.

Cooldown: after a behaviour with cooldown c runs for an entity at tick t, it is not chosen for
that entity during ticks t+1 .. t+c. It is kept per entity id (`ids`), since rows move.

Errors: a condition or action that raises, or leaves a non-finite position, is counted in the
`StepResult` (never raised) and its rows keep their state: a bad custom behaviour never stops
a district. Misuse of `step` itself (wrong shapes, a missing `ids`) raises `ValueError`.

    Exception
     └── BehaviourError    a behaviour failed for some rows (behaviour, reason)

`vel` is a unit heading for `flocking` (Mesa's boids), a velocity for the other built-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from world.flocking import BoundsTuple, FlockParams, confine, flock_step
from world.formation import assign_slots, formation_targets, steer_to
from world.tasks import assign_tasks

__all__ = [
    "Action",
    "Behaviour",
    "BehaviourError",
    "BehaviourRegistry",
    "Condition",
    "Group",
    "StepResult",
    "View",
    "default_registry",
]

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]


class BehaviourError(Exception):
    """A behaviour failed for some rows; they kept their state."""

    def __init__(self, behaviour: str, reason: str, rows: int = 0) -> None:
        super().__init__(f"behaviour {behaviour!r} failed for {rows} rows: {reason}")
        self.behaviour = behaviour
        self.reason = reason
        self.rows = rows


@dataclass(frozen=True, slots=True)
class Group:
    """One swarm (or the free entities): its behaviour, that behaviour's parameters, bounds."""

    behaviour: str
    params: Mapping[str, Any] = field(default_factory=dict)
    paused: bool = False
    bounds: BoundsTuple | None = None


@dataclass(slots=True)
class View:
    """The rows a behaviour runs on: copies of their `pos`/`vel` to update in place."""

    pos: FloatArray
    vel: FloatArray
    rows: IndexArray  # the rows in the stepped arrays
    group: Group
    tick: int
    halo_pos: FloatArray
    halo_vel: FloatArray
    extra: dict[str, NDArray[Any]]  # the caller's extra columns, at these rows


Condition = Callable[[View], NDArray[np.bool_]]
Action = Callable[[View, Mapping[str, Any], float], None]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """A behaviour: `action(view, params, dt)` for the rows where `condition(view)` holds.

    `params` is `defaults` overlaid with the group's params.
    """

    id: str
    action: Action
    condition: Condition | None = None
    priority: int = 0
    cooldown: int = 0
    applies_to_all: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StepResult:
    """What a step did: rows run per behaviour, and the failures."""

    stepped: int = 0  # rows a behaviour ran for without error
    errors: int = 0  # rows an action failed for, plus rows a condition failed on
    by_behaviour: dict[str, int] = field(default_factory=dict)
    errors_by_behaviour: dict[str, int] = field(default_factory=dict)
    failures: list[BehaviourError] = field(default_factory=list)

    def _ran(self, behaviour: str, rows: int) -> None:
        self.stepped += rows
        self.by_behaviour[behaviour] = self.by_behaviour.get(behaviour, 0) + rows

    def _fail(self, behaviour: str, reason: str, rows: int, cause: BaseException | None) -> None:
        error = BehaviourError(behaviour, reason, rows)
        error.__cause__ = cause
        self.failures.append(error)
        self.errors += rows
        self.errors_by_behaviour[behaviour] = self.errors_by_behaviour.get(behaviour, 0) + rows


class BehaviourRegistry:
    """The behaviours by id, and the per-entity cooldowns; `step` runs them."""

    def __init__(self) -> None:
        self._behaviours: dict[str, Behaviour] = {}
        self._overrides: list[Behaviour] = []
        self._cooling: dict[str, dict[Hashable, int]] = {}  # behaviour -> entity -> last tick

    def register(self, behaviour: Behaviour) -> None:
        """Add a behaviour; ValueError if its id is taken."""
        if behaviour.id in self._behaviours:
            raise ValueError(f"a behaviour {behaviour.id!r} is already registered")
        if behaviour.cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {behaviour.cooldown}")
        self._behaviours[behaviour.id] = behaviour
        if behaviour.applies_to_all:
            self._overrides.append(behaviour)

    def get(self, id: str) -> Behaviour:
        """The behaviour `id`; KeyError naming the registered ids if there is none."""
        if id not in self._behaviours:
            raise KeyError(f"no behaviour {id!r}; registered: {', '.join(self.ids())}")
        return self._behaviours[id]

    def ids(self) -> list[str]:
        """The registered ids, in registration order."""
        return list(self._behaviours)

    def __contains__(self, id: object) -> bool:
        return id in self._behaviours

    def step(
        self,
        pos: FloatArray,
        vel: FloatArray,
        group_index: NDArray[np.integer[Any]],
        groups: Sequence[Group],
        *,
        tick: int,
        dt: float,
        ids: Sequence[Hashable] | NDArray[Any] | None = None,
        halo_pos: FloatArray | None = None,
        halo_vel: FloatArray | None = None,
        extra: Mapping[str, NDArray[Any]] | None = None,
    ) -> StepResult:
        """Run one tick over `pos`/`vel` (n, 2) in place; row i is in `groups[group_index[i]]`.

        Rows with a negative group index are not stepped. `ids` (n entity ids) is needed as
        soon as a candidate behaviour has a cooldown. `extra` columns (n, ...) reach
        conditions and actions as `view.extra`.
        """
        n = len(pos)
        if pos.shape != (n, 2) or vel.shape != (n, 2) or len(group_index) != n:
            raise ValueError("pos and vel must be (n, 2) and group_index (n,)")
        if ids is not None and len(ids) != n:
            raise ValueError(f"ids has {len(ids)} entries for {n} rows")
        halo_p = np.zeros((0, 2)) if halo_pos is None else halo_pos
        halo_v = np.zeros((0, 2)) if halo_vel is None else halo_vel
        if ids is None and any(b.cooldown for b in self._overrides + self._own(groups)):
            raise ValueError("step needs ids: a behaviour to run has a cooldown")
        result = StepResult()
        for g, rows in _split(np.asarray(group_index), len(groups)):
            group = groups[g]
            own = self._behaviours.get(group.behaviour)
            if group.paused:
                continue
            if own is None:
                result._fail(group.behaviour, "not a registered behaviour", len(rows), None)
                continue

            def view(rows: IndexArray, group: Group = group) -> View:
                columns = {k: np.asarray(c)[rows] for k, c in (extra or {}).items()}
                # np.take is about ten times faster than pos[rows] for (n, 2) rows
                pos_rows, vel_rows = np.take(pos, rows, axis=0), np.take(vel, rows, axis=0)
                return View(pos_rows, vel_rows, rows, group, tick, halo_p, halo_v, columns)

            for behaviour, chosen in list(self._choose(own, rows, view, tick, ids, result)):
                batch = view(chosen)
                try:
                    behaviour.action(batch, {**behaviour.defaults, **group.params}, dt)
                    if batch.pos.shape != (len(chosen), 2) or batch.vel.shape != (len(chosen), 2):
                        raise ValueError("the action changed the shape of view.pos or view.vel")
                    if not np.isfinite(batch.pos).all():
                        raise ValueError("the action left a non-finite position")
                except Exception as exc:  # any failure is the behaviour's
                    result._fail(behaviour.id, f"{type(exc).__name__}: {exc}", len(chosen), exc)
                    continue
                _put(pos, chosen, batch.pos)
                _put(vel, chosen, batch.vel)
                if behaviour.cooldown and ids is not None:
                    cooling = self._cooling.setdefault(behaviour.id, {})
                    cooling.update(dict.fromkeys((ids[i] for i in chosen.tolist()), tick))
                result._ran(behaviour.id, len(chosen))
        return result

    def _own(self, groups: Sequence[Group]) -> list[Behaviour]:
        """The registered behaviours of the groups that are not paused."""
        own = (self._behaviours.get(g.behaviour) for g in groups if not g.paused)
        return [b for b in own if b is not None]

    def _choose(
        self,
        own: Behaviour,
        rows: IndexArray,
        view: Callable[[IndexArray], View],
        tick: int,
        ids: Sequence[Hashable] | NDArray[Any] | None,
        result: StepResult,
    ) -> Iterator[tuple[Behaviour, IndexArray]]:
        """Per behaviour, the rows of one group it wins (highest priority first)."""
        candidates = [own, *(b for b in self._overrides if b is not own)]
        candidates.sort(key=lambda b: -b.priority)  # stable: own first among equals
        if len(candidates) == 1 and own.condition is None and not own.cooldown:
            yield own, rows
            return
        left = rows
        for behaviour in candidates:
            if not len(left):
                return
            take = np.ones(len(left), dtype=bool)
            if behaviour.condition is not None:
                try:
                    take = np.asarray(behaviour.condition(view(left)), dtype=bool)
                    if take.shape != (len(left),):
                        raise ValueError(f"condition gave shape {take.shape} for {len(left)} rows")
                except Exception as exc:  # any failure is the behaviour's
                    reason = f"condition: {type(exc).__name__}: {exc}"
                    result._fail(behaviour.id, reason, len(left), exc)
                    continue  # as if false for these rows
            if behaviour.cooldown:
                take &= ~self._cooling_rows(behaviour, left, tick, ids)
            if take.any():
                yield behaviour, left[take]
                left = left[~take]

    def _cooling_rows(
        self,
        behaviour: Behaviour,
        rows: IndexArray,
        tick: int,
        ids: Sequence[Hashable] | NDArray[Any] | None,
    ) -> NDArray[np.bool_]:
        """Which of `rows` ran `behaviour` within its cooldown before `tick`."""
        assert ids is not None  # checked by step
        cooling = self._cooling.get(behaviour.id)
        if not cooling:
            return np.zeros(len(rows), dtype=bool)
        since = tick - behaviour.cooldown
        for entity in [e for e, ran in cooling.items() if ran < since]:
            del cooling[entity]  # expired
        return np.fromiter(
            (cooling.get(ids[i], since - 1) >= since for i in rows.tolist()), bool, len(rows)
        )


def _put(target: FloatArray, rows: IndexArray, values: FloatArray) -> None:
    """target[rows] = values for (n, 2) arrays: as one 16-byte element per row when the layout
    allows, which is about ten times faster than numpy's row-wise fancy assignment."""
    if (
        target.dtype == values.dtype == np.float64
        and target.flags.c_contiguous
        and values.flags.c_contiguous
    ):
        target.view(np.complex128)[:, 0][rows] = values.view(np.complex128)[:, 0]
    else:
        target[rows] = values


def _split(group_index: NDArray[np.integer[Any]], count: int) -> list[tuple[int, IndexArray]]:
    """(group, its rows) for each group present, without the rows of negative index."""
    n = len(group_index)
    if n == 0:
        return []
    lo, hi = int(group_index.min()), int(group_index.max())
    if hi >= count:
        raise ValueError(f"group index {hi} but only {count} groups")
    if lo == hi:
        return [] if lo < 0 else [(lo, np.arange(n))]
    order = np.argsort(group_index, kind="stable")
    cuts = np.flatnonzero(np.diff(group_index[order])) + 1
    parts = np.split(order, cuts)
    return [(int(group_index[p[0]]), p) for p in parts if group_index[p[0]] >= 0]


# -- the built-in behaviours ---------------------------------------------------------------------
_FLOCK_FIELDS = tuple(f.name for f in fields(FlockParams))


def _flocking(view: View, params: Mapping[str, Any], dt: float) -> None:
    """Boids (world.flocking); params: FlockParams' fields (speed per unit time), torus."""
    flock = FlockParams(**{k: float(params[k]) for k in _FLOCK_FIELDS if k in params})
    flock_step(
        view.pos,
        view.vel,
        replace(flock, speed=flock.speed * dt),
        bounds=view.group.bounds,
        torus=bool(params.get("torus", False)),
        halo_pos=view.halo_pos,
        halo_vel=view.halo_vel,
    )


def _formation(view: View, params: Mapping[str, Any], dt: float) -> None:
    """Move into a formation; params: shape, spacing, center (default: the group's current
    centroid), heading (radians), max_speed (per unit time), gain, exact_limit."""
    center = params.get("center")
    if center is None:
        center = view.pos.mean(axis=0)
    targets = formation_targets(
        params.get("shape", "grid"),
        len(view.pos),
        (float(center[0]), float(center[1])),
        float(params.get("spacing", 2.0)),
        float(params.get("heading", 0.0)),
    )
    # Exact slots up to exact_limit agents (a few ms at 256), sorted strips above: every tick.
    slots = assign_slots(view.pos, targets, exact_limit=int(params.get("exact_limit", 256)))
    _steer(view, targets[slots], params, dt)


def _tasks(view: View, params: Mapping[str, Any], dt: float) -> None:
    """Go to tasks; params: tasks ([[x, y], ...]), policy, start, max_speed. An agent without a
    task stays; `extra["busy"]` (if given) marks agents that take none."""
    tasks = np.asarray(params.get("tasks", ()), dtype=np.float64).reshape(-1, 2)
    busy = view.extra["busy"].astype(bool) if "busy" in view.extra else None
    agent_of = assign_tasks(
        view.pos,
        tasks,
        params.get("policy", "nearest"),
        busy=busy,
        start=int(params.get("start", 0)),
    )
    targets = view.pos.copy()
    done = np.flatnonzero(agent_of >= 0)
    targets[agent_of[done]] = tasks[done]
    _steer(view, targets, params, dt)


def _steer(view: View, targets: FloatArray, params: Mapping[str, Any], dt: float) -> None:
    """steer_to at max_speed per unit time; `vel` becomes the velocity per unit time."""
    max_speed = float(params.get("max_speed", 1.0))
    steer_to(
        view.pos, view.vel, targets, max_speed=max_speed * dt, gain=float(params.get("gain", 1.0))
    )
    if dt > 0:
        view.vel /= dt


def _drift(view: View, params: Mapping[str, Any], dt: float) -> None:
    """Straight on along `vel` (at `speed` per unit time if given), reflected by the bounds."""
    if "speed" in params:
        norm = np.sqrt((view.vel * view.vel).sum(axis=1))
        scale = np.divide(float(params["speed"]), norm, out=np.zeros_like(norm), where=norm > 0)
        view.vel *= scale[:, None]
    view.pos += view.vel * dt
    if view.group.bounds is not None:
        confine(view.pos, view.vel, view.group.bounds)


def _hold(view: View, params: Mapping[str, Any], dt: float) -> None:
    """Stay put."""
    view.vel[:] = 0.0


def default_registry() -> BehaviourRegistry:
    """A registry with the built-ins: flocking, formation, tasks, drift, hold."""
    registry = BehaviourRegistry()
    for id, action in (
        ("flocking", _flocking),
        ("formation", _formation),
        ("tasks", _tasks),
        ("drift", _drift),
        ("hold", _hold),
    ):
        registry.register(Behaviour(id=id, action=action))
    return registry
