"""A started game and a driver for it: who plays what, and commands that must pass or fail."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from mafia import NAMES, Applied, Event, Game, Rejected, Role, assign_roles

SEED = 7
PLAYERS = list(NAMES[:12])


def start_command(players: list[str] = PLAYERS, seed: int = SEED) -> dict[str, Any]:
    return {
        "op": "start",
        "players": players,
        "seed": seed,
        "day_seconds": 90,
        "night_seconds": 45.5,
    }


@dataclass
class Table:
    """A 12-player game at night 1, with its cast, and commands checked as they are applied."""

    game: Game
    mafia: list[str]
    detective: str
    doctor: str
    villagers: list[str]

    def ok(self, command: Mapping[str, Any]) -> list[Event]:
        """Apply a command that the rules must accept."""
        assert self.game.check(command) is None
        outcome = self.game.apply(command)
        assert isinstance(outcome, Applied), outcome
        return outcome.events

    def refused(self, command: Any, reason: str) -> str:
        """Apply a command that the rules must refuse, with `reason` in the reason."""
        before = json.dumps(self.game.to_dict())
        said = self.game.check(command)
        outcome = self.game.apply(command)
        assert outcome == Rejected(said or "")
        assert isinstance(outcome, Rejected) and reason in outcome.reason, outcome
        assert json.dumps(self.game.to_dict()) == before, "a refused command changed the game"
        return outcome.reason

    def advance(self) -> list[Event]:
        game = self.game
        return self.ok({"op": "advance", "phase": str(game.phase), "round": game.round})

    def act(self, op: str, player: str, target: str) -> list[Event]:
        return self.ok({"op": op, "player": player, "target": target})

    def night(
        self, victim: str | None = None, protect: str | None = None, inspect: str | None = None
    ) -> list[Event]:
        """Play the night: every living mafia member votes for `victim`, then advance."""
        alive = self.game.alive
        if victim is not None:
            for member in self.mafia:
                if member in alive:
                    self.act("kill", member, victim)
        if protect is not None:
            self.act("protect", self.doctor, protect)
        if inspect is not None:
            self.act("inspect", self.detective, inspect)
        return self.advance()

    def day(self, votes: Mapping[str, str]) -> list[Event]:
        """Play the day: cast `votes` (voter to target), then advance."""
        for voter, target in votes.items():
            self.act("vote", voter, target)
        return self.advance()


@pytest.fixture
def table() -> Table:
    game = Game()
    assert isinstance(game.apply(start_command()), Applied)
    roles = assign_roles(PLAYERS, SEED)
    return Table(
        game,
        mafia=[p for p in PLAYERS if roles[p] is Role.MAFIA],
        detective=next(p for p in PLAYERS if roles[p] is Role.DETECTIVE),
        doctor=next(p for p in PLAYERS if roles[p] is Role.DOCTOR),
        villagers=[p for p in PLAYERS if roles[p] is Role.VILLAGER],
    )
