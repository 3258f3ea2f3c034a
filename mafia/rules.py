"""The rules of Mafia as a deterministic state machine.

A `Game` lives in a replicated log: every replica applies the same commands in the same order
and reaches the same state. So the rules are pure: no clock, no I/O, no global random; the one
random draw (who gets which role) comes from the seed carried by the `start` command.
Commands are plain dicts with an `op`:

- `start` (`players`, `seed`, `day_seconds`, `night_seconds`): in the lobby only; 12 to 30
  players with ids of `[a-z0-9_-]+`, each once. Roles are dealt, each player is told theirs
  privately (the mafia also learn each other), and night 1 begins.
- `say` (`player`, `text`, 1 to 500 characters) and `vote` (`player`, `target`) by day, from
  the living; a second vote replaces the first.
- `kill`, `protect` and `inspect` (`player`, `target`) at night, from the living mafia, doctor
  and detective. A mafia member votes for a living non-mafia victim (again: the vote is
  replaced); the doctor protects a living player, maybe themselves, but not the one they
  protected the night before; the detective inspects another living player once a night and
  is told at once, privately, whether that player is mafia.
- `advance` (`phase`, `round`) ends the current phase, when its timer runs out or everyone who
  must act has acted (`everyone_acted`). It names the phase it ends, so a duplicated or late
  advance is refused as stale and does nothing.

At dawn the mafia's victim is the plurality of their votes (a tie goes to the player who
joined first); the doctor's protection saves them, and otherwise they die and their role is
revealed. At dusk the plurality of the day's votes is lynched and their role revealed; a tie,
or no vote at all, lynches nobody. The town wins when no mafia is left alive; the mafia wins
when they are at least as many as everyone else alive. Then the game is over, and every
further command is refused.

`check(command)` says why a command would be refused (None: it would be applied); `apply`
applies it, or refuses it changing nothing. `to_dict` / `from_dict` round-trip the whole
state, for snapshots. `view(player)` is what one player may know.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mafia.events import EVERYONE, Applied, Event, Kind, Outcome, Phase, Rejected
from mafia.roles import Role, Team, assign_roles, roster_problem
from mafia.state import State

__all__ = [
    "Game",
    "MAX_TEXT",
    "Phase",
    "Role",
    "Team",
    "assign_roles",
]

MAX_TEXT = 500
_WHEN = {Phase.DAY: "by day", Phase.NIGHT: "at night"}


class _Refused(Exception):
    """Raised inside `Game.check` to stop at the first reason to refuse a command."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _seconds(command: Mapping[str, Any], key: str) -> float:
    value = command.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Refused(f"{key!r} must be a number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise _Refused(f"{key!r} must be positive, got {value!r}")
    return float(value)


class Game(State):
    """One game of Mafia: its state (see `State`), changed only by `apply`."""

    # -- commands --------------------------------------------------------------------------

    def check(self, command: Mapping[str, Any]) -> str | None:
        """Why `command` would be refused, or None if `apply` would apply it."""
        try:
            self._check(command)
        except _Refused as refusal:
            return refusal.reason
        return None

    def apply(self, command: Mapping[str, Any]) -> Outcome:
        """Apply `command` and return the events it made, or refuse it changing nothing."""
        reason = self.check(command)
        if reason is not None:
            return Rejected(reason)
        first = len(self.events)
        _OPS[command["op"]][1](self, command)
        return Applied(self.events[first:])

    def _check(self, command: Mapping[str, Any]) -> None:
        if not isinstance(command, Mapping):
            raise _Refused("a command must be a mapping")
        op = command.get("op")
        if not isinstance(op, str) or op not in _OPS:
            raise _Refused(f"unknown op {op!r}")
        if self.phase is Phase.OVER:
            raise _Refused("the game is over")
        if op == "start" and self.phase is not Phase.LOBBY:
            raise _Refused("the game has already started")
        if op != "start" and self.phase is Phase.LOBBY:
            raise _Refused("the game has not started")
        _OPS[op][0](self, command)

    def _player(self, command: Mapping[str, Any], key: str) -> str:
        value = command.get(key)
        if not isinstance(value, str):
            raise _Refused(f"{key!r} must be a player id")
        if value not in self.roles:
            raise _Refused(f"there is no player {value!r}")
        return value

    def _actor(self, command: Mapping[str, Any], phase: Phase, role: Role | None) -> str:
        """The living player acting in `command`, checked to be in `phase` and of `role`."""
        player = self._player(command, "player")
        if player not in self.alive:
            raise _Refused(f"{player} is dead")
        if self.phase is not phase:
            op = command["op"]
            raise _Refused(f"you can only {op} {_WHEN[phase]}; it is {self.phase} {self.round}")
        if role is not None and self.roles[player] is not role:
            raise _Refused(f"only the {role} can {command['op']}")
        return player

    def _target(self, command: Mapping[str, Any]) -> str:
        target = self._player(command, "target")
        if target not in self.alive:
            raise _Refused(f"{target} is dead")
        return target

    def _check_start(self, command: Mapping[str, Any]) -> None:
        problem = roster_problem(command.get("players"))
        if problem is not None:
            raise _Refused(problem)
        seed = command.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _Refused("'seed' must be an integer")
        _seconds(command, "day_seconds")
        _seconds(command, "night_seconds")

    def _check_say(self, command: Mapping[str, Any]) -> None:
        self._actor(command, Phase.DAY, None)
        text = command.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            raise _Refused(f"'text' must be 1 to {MAX_TEXT} characters, not all blank")

    def _check_vote(self, command: Mapping[str, Any]) -> None:
        self._actor(command, Phase.DAY, None)
        self._target(command)

    def _check_kill(self, command: Mapping[str, Any]) -> None:
        self._actor(command, Phase.NIGHT, Role.MAFIA)
        if self.roles[self._target(command)] is Role.MAFIA:
            raise _Refused("the mafia cannot kill one of their own")

    def _check_protect(self, command: Mapping[str, Any]) -> None:
        self._actor(command, Phase.NIGHT, Role.DOCTOR)
        target = self._target(command)
        if target == self.last_protected:
            raise _Refused(f"the doctor cannot protect {target} two nights running")

    def _check_inspect(self, command: Mapping[str, Any]) -> None:
        player = self._actor(command, Phase.NIGHT, Role.DETECTIVE)
        if self._target(command) == player:
            raise _Refused("the detective cannot inspect themselves")
        if self.inspected is not None:
            raise _Refused("the detective has already inspected someone tonight")

    def _check_advance(self, command: Mapping[str, Any]) -> None:
        phase, round_ = command.get("phase"), command.get("round")
        if phase not in (Phase.DAY, Phase.NIGHT) or type(round_) is not int:
            raise _Refused("'phase' must be 'day' or 'night' and 'round' an integer")
        if (phase, round_) != (self.phase, self.round):
            raise _Refused(f"stale advance: it is {self.phase} {self.round}, not {phase} {round_}")

    def _emit(self, kind: Kind, data: Mapping[str, Any], audience: str = EVERYONE) -> None:
        seq = len(self.events) + 1
        self.events.append(Event(seq, kind, self.round, self.phase, audience, data))

    def _do_start(self, command: Mapping[str, Any]) -> None:
        self.players = list(command["players"])
        self.roles = assign_roles(self.players, command["seed"])
        self.alive = list(self.players)
        self.seed = command["seed"]
        self.day_seconds = _seconds(command, "day_seconds")
        self.night_seconds = _seconds(command, "night_seconds")
        mafia = [p for p in self.players if self.roles[p] is Role.MAFIA]
        self._emit(
            Kind.STARTED,
            {
                "players": list(self.players),
                "mafia": len(mafia),
                "day_seconds": self.day_seconds,
                "night_seconds": self.night_seconds,
            },
        )
        for player in self.players:
            role = self.roles[player]
            data: dict[str, Any] = {"role": str(role)}
            if role is Role.MAFIA:
                data["team"] = list(mafia)
            self._emit(Kind.ROLE, data, audience=player)
        self._begin(Phase.NIGHT, 1)

    def _do_say(self, command: Mapping[str, Any]) -> None:
        self._emit(Kind.SAID, {"player": command["player"], "text": command["text"]})

    def _do_vote(self, command: Mapping[str, Any]) -> None:
        self.votes[command["player"]] = command["target"]
        self._emit(Kind.VOTED, {"player": command["player"], "target": command["target"]})

    def _do_kill(self, command: Mapping[str, Any]) -> None:
        self.kills[command["player"]] = command["target"]

    def _do_protect(self, command: Mapping[str, Any]) -> None:
        self.protected = command["target"]

    def _do_inspect(self, command: Mapping[str, Any]) -> None:
        target = command["target"]
        self.inspected = target
        data = {"target": target, "team": str(self.roles[target].team)}
        self._emit(Kind.INSPECTED, data, audience=command["player"])

    def _do_advance(self, command: Mapping[str, Any]) -> None:
        if self.phase is Phase.NIGHT:
            self._end_night()
        else:
            self._end_day()

    # -- phases ----------------------------------------------------------------------------

    def _leaders(self, ballots: Iterable[str]) -> tuple[list[str], int]:
        """The players with the most ballots, in join order, and how many ballots they got."""
        counts = Counter(ballots)
        top = max(counts.values(), default=0)
        return [p for p in self.players if top and counts[p] == top], top

    def _end_night(self) -> None:
        leaders, _ = self._leaders(self.kills.values())
        if leaders:
            victim = leaders[0]
            if victim == self.protected:
                self._emit(Kind.SAVED, {"player": victim})
            else:
                self.alive.remove(victim)
                self._emit(Kind.KILLED, {"player": victim, "role": str(self.roles[victim])})
        self.last_protected = self.protected
        self.kills, self.protected, self.inspected = {}, None, None
        if not self._settle():
            self._begin(Phase.DAY, self.round)

    def _end_day(self) -> None:
        leaders, top = self._leaders(self.votes.values())
        if len(leaders) == 1:
            lynched = leaders[0]
            self.alive.remove(lynched)
            role = str(self.roles[lynched])
            self._emit(Kind.LYNCHED, {"player": lynched, "role": role, "votes": top})
        else:
            reason = "tie" if leaders else "no votes"
            self._emit(Kind.NO_LYNCH, {"reason": reason, "tied": leaders})
        self.votes = {}
        if not self._settle():
            self._begin(Phase.NIGHT, self.round + 1)

    def _settle(self) -> bool:
        """End the game if a team has won; True if it has."""
        mafia = sum(1 for p in self.alive if self.roles[p] is Role.MAFIA)
        if mafia and mafia < len(self.alive) - mafia:
            return False
        self.winner = Team.MAFIA if mafia else Team.TOWN
        roles = {p: str(self.roles[p]) for p in self.players}
        self._emit(Kind.WON, {"winner": str(self.winner), "roles": roles})
        self.phase = Phase.OVER
        return True

    def _begin(self, phase: Phase, round_: int) -> None:
        self.phase, self.round = phase, round_
        self._emit(Kind.PHASE, {"phase": str(phase), "round": round_})

    def everyone_acted(self) -> bool:
        """Whether everyone who must act in this phase has: the leader may advance early.

        At night: every living mafia member has voted a kill, and the doctor and the detective
        have acted if alive. By day: every living player has voted.
        """
        if self.phase is Phase.DAY:
            return all(p in self.votes for p in self.alive)
        if self.phase is not Phase.NIGHT:
            return False
        for player in self.alive:
            role = self.roles[player]
            if role is Role.MAFIA and player not in self.kills:
                return False
            if role is Role.DOCTOR and self.protected is None:
                return False
            if role is Role.DETECTIVE and self.inspected is None:
                return False
        return True

    def deadline_seconds(self) -> float | None:
        """How long the current phase lasts; None in the lobby and once the game is over."""
        lengths = {Phase.DAY: self.day_seconds, Phase.NIGHT: self.night_seconds}
        return lengths.get(self.phase)


_Handler = Callable[[Game, Mapping[str, Any]], None]
_OPS: dict[str, tuple[_Handler, _Handler]] = {
    "start": (Game._check_start, Game._do_start),
    "say": (Game._check_say, Game._do_say),
    "vote": (Game._check_vote, Game._do_vote),
    "kill": (Game._check_kill, Game._do_kill),
    "protect": (Game._check_protect, Game._do_protect),
    "inspect": (Game._check_inspect, Game._do_inspect),
    "advance": (Game._check_advance, Game._do_advance),
}
"""Each op's check (raises _Refused) and handler (applies a command its check passed)."""
