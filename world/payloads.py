"""Payload models of the world topics (`mv/world/...`, `mv/swarm/...`, `mv/events/...`).

Referenced from topics.yaml as `world.payloads:Name`. High-rate streams (positions, spawns,
hand-offs) are columnar: one message carries many entities as parallel lists.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from bus.payloads import Id, Payload

__all__ = [
    "AgentError",
    "Bounds",
    "Building",
    "DistrictControl",
    "EntityColumns",
    "Handoff",
    "RegionInfo",
    "RegionMap",
    "RegionSnapshot",
    "ScaleProgress",
    "StepReport",
    "SwarmSpec",
    "SwarmStatus",
    "Tick",
    "WorldSnapshot",
]

Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class Bounds(Payload):
    """An axis-aligned rectangle: x0 <= x < x1, y0 <= y < y1."""

    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError("bounds need x1 > x0 and y1 > y0")
        return self

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


class Tick(Payload):
    """One beat of the world clock: districts step when it arrives."""

    world: Id
    tick: int = Field(ge=0)
    sent: float = Field(description="Orchestrator's wall clock, seconds since the epoch.")
    dt: float = Field(gt=0, description="Simulated seconds this tick advances.")
    rate: float = Field(gt=0, description="Target ticks per second.")
    dilation: float = Field(gt=0, le=1, description="Achieved rate / target rate (1 = on time).")


class RegionInfo(Payload):
    """One region of the world and the district server that owns it."""

    id: Id
    bounds: Bounds
    district: Id = Field(description="The district server that owns the region.")
    parent: Id | None = Field(default=None, description="The region it was split from.")
    entities: int = Field(default=0, ge=0)
    version: int = Field(default=0, ge=0)


class RegionMap(Payload):
    """Which district server owns which region; versioned, retained, the orchestrator's."""

    world: Id
    version: int = Field(ge=0)
    bounds: Bounds
    regions: list[RegionInfo]

    @model_validator(mode="after")
    def _unique(self) -> RegionMap:
        ids = [r.id for r in self.regions]
        if len(set(ids)) != len(ids):
            raise ValueError("region ids must be unique")
        return self


class WorldSnapshot(Payload):
    """The world's current state, retained: clock, regions and counts."""

    world: Id
    tick: int = Field(ge=0)
    rate: float = Field(gt=0, description="Achieved ticks per second.")
    target_rate: float = Field(gt=0)
    dilation: float = Field(gt=0, le=1)
    dilation_floor: float = Field(gt=0, le=1)
    paused: bool
    entities: int = Field(ge=0)
    version: int = Field(ge=0, description="Region map version.")
    regions: list[RegionInfo]
    districts: dict[str, int] = Field(default_factory=dict, description="Entities per district.")
    updated: float


class EntityColumns(Payload):
    """Entities in columnar form (parallel lists), as spawns and hand-offs carry them."""

    id: list[Annotated[str, Field(min_length=1, max_length=64)]]
    x: list[Coordinate]
    y: list[Coordinate]
    vx: list[Coordinate]
    vy: list[Coordinate]
    swarm: list[str]
    ov: list[int] = Field(default_factory=list, description="Ownership versions (hand-offs).")

    @model_validator(mode="after")
    def _same_length(self) -> EntityColumns:
        n = len(self.id)
        lengths = {len(self.x), len(self.y), len(self.vx), len(self.vy), len(self.swarm)}
        if lengths != {n} or (self.ov and len(self.ov) != n):
            raise ValueError("entity columns have different lengths")
        return self

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def empty(cls) -> EntityColumns:
        return cls.model_construct(id=[], x=[], y=[], vx=[], vy=[], swarm=[], ov=[])

    def take(self, rows: list[int]) -> EntityColumns:
        """The entities at `rows`, in that order (no copy when that is all of them)."""
        if len(rows) == len(self.id) and rows == list(range(len(self.id))):
            return self
        return EntityColumns.model_construct(
            id=[self.id[i] for i in rows],
            x=[self.x[i] for i in rows],
            y=[self.y[i] for i in rows],
            vx=[self.vx[i] for i in rows],
            vy=[self.vy[i] for i in rows],
            swarm=[self.swarm[i] for i in rows],
            ov=[self.ov[i] for i in rows] if self.ov else [0] * len(rows),
        )


class StepReport(Payload):
    """A district server's report after stepping one tick."""

    district: Id
    tick: int = Field(ge=0)
    duration: float = Field(ge=0, description="Seconds the step took.")
    entities: int = Field(ge=0)
    stepped: int = Field(
        default=0,
        ge=0,
        description="Entities stepped this tick: `entities` plus those that then left across a "
        "border.",
    )
    regions: dict[str, int] = Field(default_factory=dict, description="Entities per region.")
    swarms: dict[str, int] = Field(default_factory=dict, description="Entities per swarm.")
    handoffs_out: int = Field(default=0, ge=0)
    handoffs_in: int = Field(default=0, ge=0)
    pending: int = Field(default=0, ge=0, description="Entities in flight to a neighbour.")
    errors: int = Field(default=0, ge=0, description="Behaviour execution errors this tick.")
    tick_sent: float = Field(default=0.0, description="When the orchestrator sent the tick.")
    map_version: int = Field(default=0, ge=0, description="The region map it steps by.")
    in_flight: dict[str, int] = Field(
        default_factory=dict, description="Per swarm, members offered to a neighbour, unanswered."
    )
    draining: dict[str, int] = Field(
        default_factory=dict,
        description="Regions it lost in a map change: hand-off batches still unanswered.",
    )
    headings: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Per swarm, the sum of its members' unit headings [x, y] (coupling).",
    )


class DistrictControl(Payload):
    """An order to one district server: spawn or despawn entities, steer agents' entities.

    `steer` sets the velocity (`vx`, `vy` of `entities`) of the entities it owns among them.
    """

    op: Literal["spawn", "despawn", "steer", "claim"]
    request: str = Field(default="", max_length=64, description="Idempotency key.")
    entities: EntityColumns | None = Field(default=None, description="spawn: who and where")
    swarm: str = Field(default="", max_length=64, description="despawn: which swarm")
    count: int = Field(default=0, ge=0, description="despawn: how many")
    ids: list[str] = Field(default_factory=list, description="despawn: these (any swarm)")
    building: str = Field(
        default="", max_length=200, description="claim: district/neighbourhood/building"
    )
    agent: str = Field(default="", max_length=64, description="claim: who claims it")

    @model_validator(mode="after")
    def _complete(self) -> DistrictControl:
        if self.op in ("spawn", "steer") and self.entities is None:
            raise ValueError(f"{self.op} needs entities")
        if self.op == "despawn" and not (self.swarm or self.ids):
            raise ValueError("despawn needs a swarm or ids")
        if self.op == "claim" and not (self.building and self.agent):
            raise ValueError("claim needs a building and an agent")
        return self


class Handoff(Payload):
    """Hand-off protocol between district servers (see components/district/handoff.py).

    `offer` carries entities whose new owner is the receiver; `accept` names the ids the
    receiver now owns (persisted before it is sent). Both are idempotent.
    """

    op: Literal["offer", "accept"]
    batch: str = Field(min_length=1, max_length=80, description="Hand-off batch id.")
    sender: Id = Field(description="The district server sending this message.")
    entities: EntityColumns | None = None
    ids: list[str] = Field(default_factory=list)
    sent: float = 0.0


class RegionSnapshot(Payload):
    """A region's entities, version and last sync time; retained, every N ticks.

    Split in `parts` messages of at most 500 entities (`.../snapshot/0`, `/1`, ...), so a
    region of any size fits the broker's packet limit; subscribe to `.../snapshot/+`.
    """

    world: Id
    region: Id
    district: Id
    bounds: Bounds
    tick: int = Field(ge=0)
    version: int = Field(ge=0)
    synced: float = Field(description="Wall clock of this snapshot.")
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1)
    total: int = Field(default=0, ge=0, description="Entities in all parts together.")
    entities: EntityColumns


class Building(Payload):
    """A building of the city: retained by the district that owns its ground."""

    district: Id
    neighbourhood: Id
    building: Id
    bounds: Bounds
    claimed_by: str | None = None
    claimed_at: float | None = None


class SwarmSpec(Payload):
    """A swarm's definition, retained on its config topic; districts step members by it."""

    name: Id
    world: Id = "main"
    behaviour: Id = "flocking"
    params: dict[str, Any] = Field(default_factory=dict)
    bounds: Bounds
    size: int = Field(default=0, ge=0, description="Target size.")
    max_size: int = Field(default=100_000, ge=0, le=10_000_000)
    paused: bool = False
    created: float = 0.0
    version: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> SwarmSpec:
        if self.size > self.max_size:
            raise ValueError(f"size {self.size} is over max_size {self.max_size}")
        return self


class SwarmStatus(Payload):
    """A swarm's live status, retained."""

    name: Id
    behaviour: Id
    state: Literal["running", "paused", "scaling"]
    agents: int = Field(ge=0)
    target: int = Field(ge=0)
    max_size: int = Field(ge=0)
    health: Literal["ok", "degraded", "stalled"] = "ok"
    updates_per_second: float = Field(default=0.0, ge=0)
    mean_latency_ms: float = Field(default=0.0, ge=0)
    coupling: float = Field(default=0.0, ge=0, le=1, description="See docs/world.md.")
    districts: dict[str, int] = Field(default_factory=dict)
    updated: float = 0.0


class ScaleProgress(Payload):
    """Progress of a scale operation: `done` of `target` members confirmed by districts."""

    name: Id
    request: str
    start: int = Field(ge=0)
    target: int = Field(ge=0)
    current: int = Field(ge=0)
    finished: bool = False
    error: str | None = None


class AgentError(Payload):
    """Sent to an agent whose answer was late, malformed or impossible."""

    tick: int = Field(ge=0)
    code: Literal["late", "malformed", "impossible", "unknown-agent"]
    reason: str
    applied: str = Field(description="The default action applied instead.")
