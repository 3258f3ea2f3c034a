"""Mafia (Werewolf): the rules of the game as a deterministic state machine.

A `Game` changes only by `apply(command)`, pure and deterministic (no clock, no I/O, the one
random draw seeded by the `start` command), so replicas that apply the same commands from a
replicated log reach the same state. Commands are plain dicts, answered by `Applied(events)`
or `Rejected(reason)`; events are addressed to everyone or to one player (`Event.audience`).
`Game.view(player)` is what one player may know; `to_dict` / `from_dict` snapshot the state.

- `mafia.events`: events and the answers to commands; the package's errors.
- `mafia.roles`: the roles, their teams, and dealing them from a seed.
- `mafia.state`: the state, its snapshots, and a player's view of it.
- `mafia.rules`: `Game`, the commands and how they change the state.
- `mafia.bots`: seeded bot players, and `play` for a whole game in memory.
- `mafia.story`: `tell`, the story of a game in plain English.

Errors::

    MafiaError              root of every error the package raises
    ├── SetupError          a roster that cannot start a game (ValueError)
    └── SnapshotError       a dict that is not a valid game or event (ValueError)

Commands are never answered with an exception: a bad command is `Rejected`, with its reason.
"""

from __future__ import annotations

from mafia.bots import NAMES, Bot, play
from mafia.events import (
    EVERYONE,
    Applied,
    Event,
    Kind,
    MafiaError,
    Outcome,
    Phase,
    Rejected,
    SetupError,
    SnapshotError,
)
from mafia.roles import MAX_PLAYERS, MIN_PLAYERS, Role, Team, assign_roles
from mafia.rules import MAX_TEXT, Game
from mafia.story import tell

__all__ = [
    "Applied",
    "Bot",
    "EVERYONE",
    "Event",
    "Game",
    "Kind",
    "MAX_PLAYERS",
    "MAX_TEXT",
    "MIN_PLAYERS",
    "MafiaError",
    "NAMES",
    "Outcome",
    "Phase",
    "Rejected",
    "Role",
    "SetupError",
    "SnapshotError",
    "Team",
    "assign_roles",
    "play",
    "tell",
]
