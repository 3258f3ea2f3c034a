"""Simple seeded players, and whole games played by them in memory.

A `Bot` learns what it is told (`observe(event)`: its role, the mafia's names if it is one of
them, what it found as the detective) and, given its player's `view`, says which commands it
sends (`decide(view)`), once per phase:

- at night the mafia vote to kill a random non-mafia player; the doctor protects a random
  living player, never the same one two nights running; the detective inspects someone it has
  not inspected yet;
- by day everyone says one short line and votes: the detective for a mafia member it found,
  the others for the most-accused player so far (the mafia never for one of their own), or
  for a random player when nobody is accused yet.

`play(players, seed)` plays a whole game with one bot a player, every bot acting in join order
and then the phase advancing, and returns the finished `Game`. The same arguments always play
the same game.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mafia.events import Applied, Event, Kind, MafiaError, Phase, SetupError
from mafia.roles import Role, Team, roster_problem
from mafia.rules import Game

__all__ = [
    "Bot",
    "NAMES",
    "play",
]

NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "kate", "leo", "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent",
    "uma", "victor", "walter", "xena", "yuri", "zoe", "amir", "bea", "cyrus", "dora",
)  # fmt: skip
"""The players' ids in `play`, in join order (beyond 30: player31, player32...)."""

_LINES = (
    "Good morning, everyone.",
    "I have a bad feeling about {suspect}.",
    "{suspect} has been very quiet.",
    "Let's not rush this.",
    "I'm with the town, for what it's worth.",
)


class Bot:
    """A player that plays `player` with its own `random.Random(seed)`."""

    def __init__(self, player: str, seed: int) -> None:
        self.player = player
        self.role: Role | None = None
        self.team: list[str] = []
        """The whole mafia, if this bot is in it."""
        self.findings: dict[str, Team] = {}
        """The detective's answers so far: inspected player to team."""
        self._rng = random.Random(seed)
        self._last_protected: str | None = None
        self._acted: set[tuple[str, int]] = set()

    def observe(self, event: Event | Mapping[str, Any]) -> None:
        """Learn from an event; events meant for someone else are ignored."""
        if not isinstance(event, Event):
            event = Event.from_dict(event)
        if event.kind not in (Kind.ROLE, Kind.INSPECTED) or event.audience != self.player:
            return
        if event.kind is Kind.ROLE:
            self.role = Role(event.data["role"])
            self.team = list(event.data.get("team", []))
        elif event.kind is Kind.INSPECTED:
            self.findings[event.data["target"]] = Team(event.data["team"])

    def decide(self, view: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The commands to send for this view: the phase's moves, once per phase."""
        phase, round_, alive = view["phase"], view["round"], list(view["alive"])
        if phase not in (Phase.DAY, Phase.NIGHT) or self.player not in alive:
            return []
        if (phase, round_) in self._acted:
            return []
        self._acted.add((phase, round_))
        role = self.role if self.role is not None else Role(view["role"])
        team = self.team or list(view.get("team", []))
        if phase == Phase.NIGHT:
            return self._night(role, alive, team)
        return self._day(role, alive, team, view.get("votes", {}))

    def _command(self, op: str, target: str) -> dict[str, Any]:
        return {"op": op, "player": self.player, "target": target}

    def _night(self, role: Role, alive: list[str], team: list[str]) -> list[dict[str, Any]]:
        if role is Role.MAFIA:
            victims = [p for p in alive if p not in team]
            return [self._command("kill", self._rng.choice(victims))] if victims else []
        if role is Role.DOCTOR:
            choices = [p for p in alive if p != self._last_protected]
            if not choices:
                return []
            self._last_protected = self._rng.choice(choices)
            return [self._command("protect", self._last_protected)]
        if role is Role.DETECTIVE:
            unknown = [p for p in alive if p != self.player and p not in self.findings]
            return [self._command("inspect", self._rng.choice(unknown))] if unknown else []
        return []

    def _day(
        self, role: Role, alive: list[str], team: list[str], votes: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        found = [p for p in alive if self.findings.get(p) is Team.MAFIA]
        candidates = [p for p in alive if p != self.player and p not in team]
        target = found[0] if found else self._most_accused(candidates, votes)
        if target is None:
            target = self._rng.choice(candidates)
        if found:
            text = f"I inspected {target}: {target} is mafia."
        else:
            text = self._rng.choice(_LINES).format(suspect=target)
        say = {"op": "say", "player": self.player, "text": text}
        return [say, self._command("vote", target)]

    @staticmethod
    def _most_accused(candidates: Sequence[str], votes: Mapping[str, str]) -> str | None:
        counts = Counter(target for target in votes.values() if target in candidates)
        top = max(counts.values(), default=0)
        return next((p for p in candidates if top and counts[p] == top), None)


def _names(count: int) -> list[str]:
    return [NAMES[i] if i < len(NAMES) else f"player{i + 1}" for i in range(count)]


def play(players: int = 12, seed: int = 0, *, max_rounds: int = 100) -> Game:
    """Play a whole game of `players` bots in memory and return it, finished.

    Raises SetupError when `players` is not 12 to 30, and MafiaError if a bot sends a command
    the rules refuse or the game is not over after `max_rounds` rounds (both would be bugs).
    """
    names = _names(players)
    problem = roster_problem(names)
    if problem is not None:
        raise SetupError(problem)
    rng = random.Random(seed)
    game = Game()
    bots = {name: Bot(name, rng.randrange(2**32)) for name in names}

    def run(command: Mapping[str, Any]) -> None:
        outcome = game.apply(command)
        if not isinstance(outcome, Applied):
            raise MafiaError(f"the rules refused {dict(command)}: {outcome.reason}")
        for event in outcome.events:
            listeners = bots.values() if event.public else [bots[event.audience]]
            for bot in listeners:
                bot.observe(event)

    run(
        {
            "op": "start",
            "players": names,
            "seed": rng.randrange(2**32),
            "day_seconds": 120.0,
            "night_seconds": 60.0,
        }
    )
    while game.phase is not Phase.OVER:
        if game.round > max_rounds:
            raise MafiaError(f"the game is not over after {max_rounds} rounds")
        for name in list(game.alive):
            for command in bots[name].decide(game.view(name, since=game.seq)):
                run(command)
        run({"op": "advance", "phase": str(game.phase), "round": game.round})
    return game
