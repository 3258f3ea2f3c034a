"""What a game is: its state, the snapshot of it, and what one player may see of it.

`State` holds the data; `mafia.rules.Game` adds the rules that change it. `to_dict` /
`from_dict` round-trip it exactly (a replica restores a snapshot and goes on applying the log
from there). Dicts of actions are written in join order, so two replicas that reached the same
state write the same snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from mafia.events import Event, Phase, SnapshotError, read_enum, read_field
from mafia.roles import Role, Team

__all__ = ["State"]


@dataclass
class State:
    """The state of one game. Read it freely; only `Game.apply` changes it.

    `players` is in join order and `alive` keeps that order; `votes` (by day: voter to target)
    and `kills` (at night: mafia member to victim), `protected` and `inspected` are the current
    phase's pending actions; `last_protected` is whom the doctor protected the night before.
    `events` is everything that was said, public or private, in order.
    """

    players: list[str] = field(default_factory=list)
    roles: dict[str, Role] = field(default_factory=dict)
    alive: list[str] = field(default_factory=list)
    phase: Phase = Phase.LOBBY
    round: int = 0
    votes: dict[str, str] = field(default_factory=dict)
    kills: dict[str, str] = field(default_factory=dict)
    protected: str | None = None
    inspected: str | None = None
    last_protected: str | None = None
    winner: Team | None = None
    seed: int | None = None
    day_seconds: float = 0.0
    night_seconds: float = 0.0
    events: list[Event] = field(default_factory=list)

    @property
    def seq(self) -> int:
        """The seq of the last event so far (0 before the first)."""
        return len(self.events)

    # -- what players see, and snapshots ---------------------------------------------------

    def view(self, player: str, *, since: int = 0) -> dict[str, Any]:
        """What `player` may know: public state, their own role, and their events after `since`.

        Other players' roles show only once revealed (by death, or for all at the end), except
        that a mafia member knows the whole mafia (`team`). An id that is not playing gets the
        public view.
        """
        role = self.roles.get(player)
        over = self.phase is Phase.OVER
        mafia = [p for p in self.players if self.roles[p] is Role.MAFIA]
        return {
            "player": player,
            "role": None if role is None else str(role),
            "team": mafia if role is Role.MAFIA else [],
            "phase": str(self.phase),
            "round": self.round,
            "players": list(self.players),
            "alive": list(self.alive),
            "revealed": {
                p: str(self.roles[p]) for p in self.players if over or p not in self.alive
            },
            "votes": self._ordered(self.votes),
            "winner": None if self.winner is None else str(self.winner),
            "events": [
                event.to_dict()
                for event in self.events[max(since, 0) :]
                if event.public or event.audience == player
            ],
        }

    def _ordered(self, actions: Mapping[str, str]) -> dict[str, str]:
        return {p: actions[p] for p in self.players if p in actions}

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-friendly data; `Game.from_dict` rebuilds it exactly."""
        return {
            "players": list(self.players),
            "roles": {p: str(self.roles[p]) for p in self.players},
            "alive": list(self.alive),
            "phase": str(self.phase),
            "round": self.round,
            "votes": self._ordered(self.votes),
            "kills": self._ordered(self.kills),
            "protected": self.protected,
            "inspected": self.inspected,
            "last_protected": self.last_protected,
            "winner": None if self.winner is None else str(self.winner),
            "seed": self.seed,
            "day_seconds": self.day_seconds,
            "night_seconds": self.night_seconds,
            "events": [event.to_dict() for event in self.events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a game from `to_dict`; SnapshotError if `data` is not a consistent game."""
        players = _ids(data, read_field(data, "players", list))
        roles = read_field(data, "roles", dict)
        if list(roles) != players:
            raise SnapshotError("'roles' must name every player, in join order", data)
        alive = _ids(data, read_field(data, "alive", list))
        if [p for p in players if p in alive] != alive:
            raise SnapshotError("'alive' must be players, in join order", data)
        votes, kills = read_field(data, "votes", dict), read_field(data, "kills", dict)
        between = _ids(data, [*votes, *votes.values(), *kills, *kills.values()], distinct=False)
        if not set(between) <= set(alive):
            raise SnapshotError("'votes' and 'kills' must be between living players", data)
        pending = [data.get(key) for key in ("protected", "inspected", "last_protected")]
        if any(p is not None and p not in players for p in pending):
            raise SnapshotError("'protected', 'inspected', 'last_protected' must be players", data)
        winner = None if data.get("winner") is None else read_enum(data, "winner", Team)
        events = [Event.from_dict(e) for e in read_field(data, "events", list)]
        if [e.seq for e in events] != list(range(1, len(events) + 1)):
            raise SnapshotError("'events' must be numbered 1, 2, 3...", data)
        return cls(
            players=players,
            roles={p: read_enum(roles, p, Role) for p in players},
            alive=alive,
            phase=read_enum(data, "phase", Phase),
            round=read_field(data, "round", int),
            votes=dict(votes),
            kills=dict(kills),
            protected=pending[0],
            inspected=pending[1],
            last_protected=pending[2],
            winner=winner,
            seed=read_field(data, "seed", (int, type(None))),
            day_seconds=float(read_field(data, "day_seconds", (int, float))),
            night_seconds=float(read_field(data, "night_seconds", (int, float))),
            events=events,
        )


def _ids(data: Mapping[str, Any], values: list[Any], *, distinct: bool = True) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise SnapshotError("player ids must be strings", data)
    if distinct and len(set(values)) != len(values):
        raise SnapshotError("a player is listed twice", data)
    return values
