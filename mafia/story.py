"""The story of a game, in plain English, from its public events.

`tell(game.events)` gives one line for the start, one per night and one per day, the winner,
and then everyone's role as revealed at the end::

    12 players sit down: alice, bob, ..., leo. 3 of them are mafia.
    Night 1: the mafia killed dave, a villager.
    Day 1: the town lynched carol (5 votes), the detective.
    Night 2: the mafia attacked erin, but the doctor saved them.
    Day 2: the vote was tied between bob and ivan; nobody was lynched.
    ...
    The town wins after 4 days.
    The mafia: frank, ivan and leo.

Private events (roles, the detective's findings) are left out, whatever is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mafia.events import Event, Kind, Phase
from mafia.roles import Role

__all__ = ["tell"]

_AS = {
    Role.MAFIA: "a member of the mafia",
    Role.DETECTIVE: "the detective",
    Role.DOCTOR: "the doctor",
    Role.VILLAGER: "a villager",
}
_GROUPS = (
    (Role.MAFIA, "The mafia"),
    (Role.DETECTIVE, "The detective"),
    (Role.DOCTOR, "The doctor"),
    (Role.VILLAGER, "The villagers"),
)


def _names(names: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _line(event: Event) -> str | None:
    """The story's line for one public event, or None if it has none of its own."""
    data, round_ = event.data, event.round
    match event.kind:
        case Kind.STARTED:
            players = list(data["players"])
            return (
                f"{len(players)} players sit down: {', '.join(players)}. "
                f"{data['mafia']} of them are mafia."
            )
        case Kind.KILLED:
            role = _AS[Role(data["role"])]
            return f"Night {round_}: the mafia killed {data['player']}, {role}."
        case Kind.SAVED:
            return (
                f"Night {round_}: the mafia attacked {data['player']}, but the doctor saved them."
            )
        case Kind.LYNCHED:
            role = _AS[Role(data["role"])]
            votes = _plural(data["votes"], "vote")
            return f"Day {round_}: the town lynched {data['player']} ({votes}), {role}."
        case Kind.NO_LYNCH if data["reason"] == "tie":
            tied = _names(list(data["tied"]))
            return f"Day {round_}: the vote was tied between {tied}; nobody was lynched."
        case Kind.NO_LYNCH:
            return f"Day {round_}: nobody voted; nobody was lynched."
        case Kind.WON:
            when = "day" if event.phase is Phase.DAY else "night"
            return f"The {data['winner']} wins after {_plural(round_, when)}."
    return None


def _reveal(roles: Mapping[str, str]) -> list[str]:
    lines = []
    for role, title in _GROUPS:
        members = [player for player, played in roles.items() if played == role]
        if members:
            lines.append(f"{title}: {_names(members)}.")
    return lines


def tell(events: Iterable[Event | Mapping[str, Any]]) -> list[str]:
    """The story of the game told by `events` (Event objects or their dicts), in order."""
    lines: list[str] = []
    night_told = True  # whether the night before the current day has its line yet
    for item in events:
        event = item if isinstance(item, Event) else Event.from_dict(item)
        if not event.public:
            continue
        if event.kind in (Kind.KILLED, Kind.SAVED):
            night_told = True
        elif event.kind is Kind.PHASE and event.phase is Phase.DAY and not night_told:
            lines.append(f"Night {event.round}: the mafia killed nobody.")
        if event.kind is Kind.PHASE:
            night_told = event.phase is not Phase.NIGHT
        line = _line(event)
        if line is not None:
            lines.append(line)
        if event.kind is Kind.WON:
            lines.extend(_reveal(event.data["roles"]))
    return lines
