"""The agent protocol's rules, without I/O: who is due, what an agent sees, what it may do.

An observation asks for an answer within a deadline. An answer is checked here:

* `late`: it came after the deadline, or answers an observation that is no longer pending;
* `impossible`: the action is not one offered, or its parameters break the world's rules
  (a move faster than the speed limit, a message too long);
* `malformed` answers never get here: the bus rejects them (see component.py).

A failed answer gets an `AgentError` back on the agent's own topic and the default action
(`wait`: stand still) is applied instead; nothing else in the world changes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bus.payloads import Action, Location, Observation
from components.scheduler.view import WorldView

__all__ = ["ACTIONS", "AgentRecord", "Effect", "Rejected", "check"]

ACTIONS = {
    "claim": "params building (district/neighbourhood/building): claim it, standing at it",
    "move": "params dx, dy (a direction) and speed (units per second, at most the limit)",
    "say": "params text (at most 280 characters): heard by agents within sight",
    "wait": "stand still",
}
DEFAULT_ACTION = "wait"
MEMORY = 8  # past actions an agent is reminded of


@dataclass(slots=True)
class AgentRecord:
    id: str
    hosted: str = ""  # the hosted behaviour's name, "" for an external agent
    home: str = ""  # the city district (region) it lives in
    cadence: int = 10
    phase: int = 0  # observed when tick % cadence == phase
    pending_tick: int | None = None  # the observation waiting for an answer
    pending_id: str = ""  # its envelope id (an answer's corr)
    deadline: float = 0.0
    memory: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MEMORY))
    notes: dict[str, Any] = field(default_factory=dict)
    inbox: list[dict[str, Any]] = field(default_factory=list)  # messages heard since last obs
    answered: int = 0
    errors: int = 0

    def due(self, tick: int) -> bool:
        return tick % self.cadence == self.phase


@dataclass(frozen=True, slots=True)
class Effect:
    """What an accepted action does: a new velocity, and/or a message said."""

    action: str
    vx: float = 0.0
    vy: float = 0.0
    say: str = ""
    building: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    code: str  # late | impossible
    reason: str


def observe(
    agent: AgentRecord,
    tick: int,
    view: WorldView,
    *,
    sight: float,
    visible_max: int,
    deadline: float,
    region: str = "",
    district: str = "",
    environment: dict[str, Any] | None = None,
) -> Observation:
    here = view.where(agent.id)
    location = None
    visible: list[dict[str, Any]] = []
    if here is not None:
        location = Location(x=here[0], y=here[1], region=region, district=district)
        visible = [
            {"id": s.id, "x": round(s.x, 3), "y": round(s.y, 3), "swarm": s.swarm,
             "distance": round(s.distance, 3)}
            for s in view.near(here[0], here[1], sight, visible_max, exclude=agent.id)
        ]  # fmt: skip
    messages, agent.inbox = agent.inbox, []
    return Observation(
        tick=tick,
        agent=agent.id,
        deadline=deadline,
        location=location,
        visible=visible,
        messages=messages,
        environment=environment or {},
        actions=sorted(ACTIONS),
        memory={"home": agent.home, "recent": list(agent.memory), "notes": dict(agent.notes)},
    )


def check(action: Action, *, max_speed: float) -> Effect | Rejected:
    """The effect of an answer, or why it is impossible."""
    name = action.action
    p = action.params
    if name not in ACTIONS:
        return Rejected(
            "impossible", f"unknown action {name!r}; actions: {', '.join(sorted(ACTIONS))}"
        )
    if name == "wait":
        return Effect("wait")
    if name == "claim":
        building = p.get("building")
        if not isinstance(building, str) or building.count("/") != 2:
            return Rejected("impossible", "claim needs params.building: district/neighbourhood/b")
        return Effect("claim", building=building)
    if name == "say":
        text = p.get("text")
        if not isinstance(text, str) or not text:
            return Rejected("impossible", "say needs params.text, a non-empty string")
        if len(text) > 280:
            return Rejected("impossible", f"say: text of {len(text)} characters; at most 280")
        return Effect("say", say=text)
    try:
        dx = float(p.get("dx", 0.0))
        dy = float(p.get("dy", 0.0))
        speed = float(p.get("speed", max_speed))
    except (TypeError, ValueError):
        return Rejected("impossible", "move: dx, dy and speed must be numbers")
    if not all(math.isfinite(v) for v in (dx, dy, speed)):
        return Rejected("impossible", "move: dx, dy and speed must be finite")
    if speed < 0 or speed > max_speed:
        return Rejected("impossible", f"move: speed {speed:g} is over the limit of {max_speed:g}")
    norm = math.hypot(dx, dy)
    if norm == 0:
        return Effect("move")
    return Effect("move", vx=dx / norm * speed, vy=dy / norm * speed)
