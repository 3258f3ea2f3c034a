"""Hosted agents: Python behaviour classes the scheduler runs, on the same protocol as external
agents (they get the same observations and publish their answers on their own `act` topic).

Register one with `HOSTED["name"] = cls`; `MAPLEVERSE_SCHEDULER_HOSTED=name:count` runs them.
"""

from __future__ import annotations

import math
import random
from typing import ClassVar, Protocol

from bus.payloads import Action, Observation

__all__ = ["HOSTED", "Greeter", "HostedAgent", "Wanderer"]


class HostedAgent(Protocol):
    def decide(self, observation: Observation) -> Action: ...


class Wanderer:
    """Walks in a direction for a while, then picks another; now and then says where it is."""

    speed: ClassVar[float] = 2.0

    def __init__(self, agent: str) -> None:
        self.rng = random.Random(agent)
        self.heading = self.rng.uniform(0, 2 * math.pi)

    def decide(self, observation: Observation) -> Action:
        if self.rng.random() < 0.2:
            self.heading = self.rng.uniform(0, 2 * math.pi)
        if observation.location is not None and self.rng.random() < 0.05:
            loc = observation.location
            return Action(
                action="say",
                tick=observation.tick,
                params={"text": f"at {loc.x:.0f},{loc.y:.0f} in {loc.region or 'the wild'}"},
                reasoning="telling the neighbours where I am",
            )
        return Action(
            action="move",
            tick=observation.tick,
            params={
                "dx": math.cos(self.heading),
                "dy": math.sin(self.heading),
                "speed": self.speed,
            },
            reasoning="wandering",
            confidence=0.5,
        )


class Greeter:
    """Goes to the nearest other agent it sees and greets whoever it has not greeted yet."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.greeted: set[str] = set()

    def decide(self, observation: Observation) -> Action:
        others = [v for v in observation.visible if not v.get("swarm")]
        fresh = [v for v in others if v["id"] not in self.greeted]
        if fresh:
            self.greeted.add(fresh[0]["id"])
            return Action(
                action="say",
                tick=observation.tick,
                params={"text": f"hello {fresh[0]['id']}, I am {self.agent}"},
                reasoning="a new face",
            )
        if others and observation.location is not None:
            near = others[0]
            dx = near["x"] - observation.location.x
            dy = near["y"] - observation.location.y
            if math.hypot(dx, dy) > 3:
                return Action(
                    action="move",
                    tick=observation.tick,
                    params={"dx": dx, "dy": dy, "speed": 1.5},
                    reasoning=f"walking over to {near['id']}",
                )
        return Action(action="wait", tick=observation.tick, reasoning="nobody new around")


HOSTED: dict[str, type[Wanderer] | type[Greeter]] = {"greeter": Greeter, "wanderer": Wanderer}
