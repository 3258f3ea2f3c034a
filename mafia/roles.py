"""Who plays what: the roles, their teams, and dealing them from a seed.

A game has 12 to 30 players (`MIN_PLAYERS`, `MAX_PLAYERS`), each with an id of `[a-z0-9_-]+`
other than `"all"` (the audience of public events). A quarter of them, rounded down, are mafia
(3 of 12, 7 of 30); one is the detective, one the doctor, and the rest are villagers. The
detective, the doctor and the villagers are the town.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Sequence

from mafia.events import EVERYONE, SetupError

__all__ = ["MAX_PLAYERS", "MIN_PLAYERS", "Role", "Team", "assign_roles", "roster_problem"]

MIN_PLAYERS = 12
MAX_PLAYERS = 30
_ID = re.compile(r"[a-z0-9_-]+")


class Team(enum.StrEnum):
    TOWN = "town"
    MAFIA = "mafia"


class Role(enum.StrEnum):
    MAFIA = "mafia"
    DETECTIVE = "detective"
    DOCTOR = "doctor"
    VILLAGER = "villager"

    @property
    def team(self) -> Team:
        return Team.MAFIA if self is Role.MAFIA else Team.TOWN


def roster_problem(players: object) -> str | None:
    """Why `players` cannot start a game, or None when they can."""
    if not isinstance(players, list | tuple):
        return "players must be a list of player ids"
    if not MIN_PLAYERS <= len(players) <= MAX_PLAYERS:
        return f"a game needs {MIN_PLAYERS} to {MAX_PLAYERS} players, got {len(players)}"
    seen: set[str] = set()
    for player in players:
        if not isinstance(player, str) or not _ID.fullmatch(player):
            return f"bad player id {player!r}: use a-z, 0-9, '_' and '-'"
        if player == EVERYONE:
            return f"{EVERYONE!r} is reserved: it is the audience of public events"
        if player in seen:
            return f"{player!r} is listed twice"
        seen.add(player)
    return None


def assign_roles(players: Sequence[str], seed: int) -> dict[str, Role]:
    """Deal the roles: `len(players) // 4` mafia, one detective, one doctor, villagers.

    The same players and seed always deal the same roles. The dict is in `players` order.
    Raises SetupError when there are not 12 to 30 players with valid, distinct ids.
    """
    problem = roster_problem(players)
    if problem is not None:
        raise SetupError(problem)
    order = list(players)
    random.Random(seed).shuffle(order)
    mafia = len(order) // 4
    dealt = dict.fromkeys(order[:mafia], Role.MAFIA)
    dealt[order[mafia]] = Role.DETECTIVE
    dealt[order[mafia + 1]] = Role.DOCTOR
    return {player: dealt.get(player, Role.VILLAGER) for player in players}
