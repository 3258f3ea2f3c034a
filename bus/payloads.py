"""Payload models for the topics declared in topics.yaml under `mv/sys/`, `rpc/` and `agent/`.

A topic's `payload: Name` refers to a model here; `payload: package.module:Name` to one
elsewhere (later components declare their own). Models are strict about what they accept:
unknown fields are ignored (newer senders), wrong types are rejected to the dead-letter topic.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Id = Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)]


class Payload(BaseModel):
    """Base of every payload model: frozen, extra fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Status(Payload):
    """Birth (`online`) or death (`offline`) of a component, retained on its status topic."""

    state: Literal["online", "offline"]
    kind: Id
    id: Id
    epoch: int = Field(ge=0, description="Grows by one on every new connection.")
    version: str = ""
    pid: int | None = None
    topics: list[str] = Field(default_factory=list, description="Topic filters it serves.")
    heartbeat_interval: float = Field(default=1.0, gt=0)


class Heartbeat(Payload):
    """Periodic liveness beat with a growing sequence number."""

    epoch: int = Field(ge=0)
    seq: int = Field(ge=0)
    sent: float = Field(description="Sender's wall clock, seconds since the epoch.")
    interval: float | None = Field(default=None, gt=0, description="Seconds to the next beat.")


class Command(Payload):
    """A command to one component."""

    command: Literal["rebirth", "drain", "stop", "set-log-level"]
    args: dict[str, Any] = Field(default_factory=dict)


class ComponentHealth(Payload):
    kind: Id
    id: Id
    state: Literal["online", "stale", "offline"]
    epoch: int
    last_seq: int = -1
    last_seen: float = 0.0
    version: str = ""


class HealthSummary(Payload):
    """The health monitor's table of every component it knows."""

    monitor: Id
    generated: float
    online: int
    stale: int
    offline: int
    components: list[ComponentHealth]


class DeadLetter(Payload):
    """A payload a component rejected, with the reason."""

    component: str
    topic: str
    reason: str
    payload: str = Field(description="The rejected payload (UTF-8 with replacement), truncated.")
    size: int


class Probe(Payload):
    """A probe message for round trips and tests."""

    seq: int = 0
    text: str = ""


class Batch(Payload):
    """Many records in columnar form: each column a list of the same length `n`."""

    n: int = Field(ge=0)
    columns: dict[str, list[Any]]
    meta: dict[str, Any] = Field(
        default_factory=dict, description="Values shared by every record (e.g. the tick)."
    )

    @field_validator("columns")
    @classmethod
    def _same_length(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        lengths = {len(col) for col in value.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns have different lengths: {sorted(lengths)}")
        return value


class RpcRequest(Payload):
    """Arguments of a request; the method is in the topic."""

    args: dict[str, Any] = Field(default_factory=dict)


class RpcReply(Payload):
    """The result of a request, or an error."""

    ok: bool
    result: Any = None
    error: str | None = None


class Location(Payload):
    x: float
    y: float
    region: str = ""
    district: str = ""


class Observation(Payload):
    """What an agent sees at a tick, and what it may do; answer on its `act` topic."""

    tick: int = 0
    agent: str = ""
    deadline: float = Field(default=1.0, description="Seconds the scheduler waits for the act.")
    location: Location | None = None
    visible: list[dict[str, Any]] = Field(
        default_factory=list, description="Entities in sight: id, x, y, swarm, distance."
    )
    messages: list[dict[str, Any]] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    actions: list[str] = Field(default_factory=list, description="Action names it may answer.")
    memory: dict[str, Any] = Field(default_factory=dict, description="Memory context.")


class Action(Payload):
    """An agent's answer to the observation of `tick`."""

    action: str = Field(min_length=1, max_length=64)
    tick: int | None = Field(default=None, description="The observation's tick it answers.")
    params: dict[str, Any] = Field(default_factory=dict)
    reasoning: str = Field(default="", max_length=4096)
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)


class AgentState(Payload):
    """An agent's current state."""

    status: str = "idle"
    data: dict[str, Any] = Field(default_factory=dict)


class Telemetry(Payload):
    """Position, battery and status of a device."""

    x: float
    y: float
    z: float = 0.0
    battery: float = Field(default=1.0, ge=0.0, le=1.0)
    status: str = Field(default="ok", max_length=64)

    @field_validator("x", "y", "z")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
