"""What a game says: its events, and the answer to each command.

Applying a command answers `Applied(events)` or `Rejected(reason)`. Every event has a `seq`
(1, 2, 3... over the whole game), a `kind`, the `round` and `phase` it happened in, an
`audience` (`"all"`, or the one player a private event is for) and a JSON-friendly `data`
dict. Events are what players are told: a replica publishes `event.to_dict()` to the event's
audience, and a client rebuilds it with `Event.from_dict`.

The kinds, and what their `data` holds:

=========  =======  ============================================================
kind       private  data
=========  =======  ============================================================
started             `players` (join order), `mafia` (how many), `day_seconds`,
                    `night_seconds`
role       yes      `role`; a mafia member also gets `team` (the whole mafia)
phase               `phase`, `round`: the phase that begins
said                `player`, `text`
voted               `player`, `target`
inspected  yes      `target`, `team` (`"mafia"` or `"town"`): the detective's answer
killed              `player`, `role`: the mafia's victim, revealed at dawn
saved               `player`: the mafia's target, whom the doctor protected
lynched             `player`, `role`, `votes`
no_lynch            `reason` (`"tie"` or `"no votes"`), `tied` (the tied players)
won                 `winner` (`"town"` or `"mafia"`), `roles` (everyone's, revealed)
                    (its `phase` is the one the game ended in)
=========  =======  ============================================================

The package's errors are rooted here, in its lowest module::

    MafiaError              root of every error the package raises
    ├── SetupError          a roster that cannot start a game (assign_roles, play)
    └── SnapshotError       a dict that is not a valid game or event
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

__all__ = [
    "Applied",
    "EVERYONE",
    "Event",
    "Kind",
    "MafiaError",
    "Outcome",
    "Phase",
    "Rejected",
    "SetupError",
    "SnapshotError",
]

EVERYONE = "all"
"""The audience of a public event (and so a name no player may take)."""


class MafiaError(Exception):
    """Root of every error raised by the mafia package."""


class SetupError(MafiaError, ValueError):
    """A roster that cannot start a game; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SnapshotError(MafiaError, ValueError):
    """A dict that is not a valid game or event; `payload` is what was given."""

    def __init__(self, reason: str, payload: object) -> None:
        self.reason = reason
        self.payload = payload
        super().__init__(f"invalid snapshot: {reason}")


class Phase(enum.StrEnum):
    LOBBY = "lobby"
    NIGHT = "night"
    DAY = "day"
    OVER = "over"


class Kind(enum.StrEnum):
    STARTED = "started"
    ROLE = "role"
    PHASE = "phase"
    SAID = "said"
    VOTED = "voted"
    INSPECTED = "inspected"
    KILLED = "killed"
    SAVED = "saved"
    LYNCHED = "lynched"
    NO_LYNCH = "no_lynch"
    WON = "won"


def read_field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`data[key]`, checked to be of `kind` (a bool is never an int here); SnapshotError if not."""
    if not isinstance(data, Mapping):
        raise SnapshotError("not a mapping", data)
    if key not in data:
        raise SnapshotError(f"missing {key!r}", data)
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise SnapshotError(f"{key!r} has the wrong type: {value!r}", data)
    return value


def read_enum(data: Mapping[str, Any], key: str, kind: type[enum.StrEnum]) -> Any:
    """`data[key]` as a member of the string enum `kind`; SnapshotError if it is not one."""
    value = read_field(data, key, str)
    try:
        return kind(value)
    except ValueError:
        raise SnapshotError(f"{key!r} is not a {kind.__name__}: {value!r}", data) from None


def _plain(value: Any) -> Any:
    """A copy of JSON-like `value` made of fresh dicts and lists (tuples become lists)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """Event number `seq` of a game; `audience` is `EVERYONE` or one player's id.

    `data` is copied into a read-only mapping, and copied out again by `to_dict`, so neither
    the game nor a listener can change an event after the fact.
    """

    seq: int
    kind: Kind
    round: int
    phase: Phase
    audience: str
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", MappingProxyType(_plain(self.data)))

    @property
    def public(self) -> bool:
        return self.audience == EVERYONE

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": str(self.kind),
            "round": self.round,
            "phase": str(self.phase),
            "audience": self.audience,
            "data": _plain(self.data),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            read_field(data, "seq", int),
            read_enum(data, "kind", Kind),
            read_field(data, "round", int),
            read_enum(data, "phase", Phase),
            read_field(data, "audience", str),
            read_field(data, "data", dict),
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """The command was applied; `events` are the events it made, in order (maybe none)."""

    events: list[Event]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The command was refused, and changed nothing; `reason` says why, for the sender."""

    reason: str


Outcome: TypeAlias = Applied | Rejected
