"""The rules command by command: what is applied, what is refused (changing nothing), and why."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PLAYERS, Table, start_command

from mafia import EVERYONE, Applied, Game, Kind, Phase, Team


def everyone_votes_for(table: Table, target: str) -> dict[str, str]:
    return {p: target for p in table.game.alive if p != target}


def mafia_wins(table: Table) -> None:
    """Three nights kill villagers and three days lynch villagers: 3 mafia against 3 left."""
    for night in range(3):
        table.night(victim=table.villagers[2 * night])
        table.day(everyone_votes_for(table, table.villagers[2 * night + 1]))


def town_wins(table: Table) -> None:
    """The town lynches one mafia member a day; the doctor saves the victim but on night 2."""
    for day, member in enumerate(table.mafia):
        victim = next(v for v in table.villagers if v in table.game.alive)
        table.night(victim=victim, protect=victim if day != 1 else table.detective)
        table.day(everyone_votes_for(table, member))


def test_start_deals_roles_privately_and_begins_night_1(table: Table) -> None:
    events = table.game.events
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    started, *roles, night = events
    assert started.kind is Kind.STARTED and started.public
    assert started.data["players"] == PLAYERS and started.data["mafia"] == 3
    assert [(e.kind, e.audience) for e in roles] == [(Kind.ROLE, p) for p in PLAYERS]
    assert roles[PLAYERS.index(table.mafia[0])].data["team"] == table.mafia
    assert "team" not in roles[PLAYERS.index(table.doctor)].data
    assert (night.kind, night.phase, night.round) == (Kind.PHASE, Phase.NIGHT, 1)
    assert table.game.deadline_seconds() == 45.5
    assert Game().deadline_seconds() is None


def test_the_mafias_plurality_dies_and_their_role_is_revealed(table: Table) -> None:
    one, two, three = table.mafia
    table.act("kill", one, table.villagers[1])
    table.act("kill", two, table.villagers[0])
    table.act("kill", three, table.villagers[0])
    table.act("kill", one, table.villagers[0])  # a second vote replaces the first
    events = table.advance()
    assert [e.kind for e in events] == [Kind.KILLED, Kind.PHASE]
    assert dict(events[0].data) == {"player": table.villagers[0], "role": "villager"}
    assert table.villagers[0] not in table.game.alive
    assert (table.game.phase, table.game.round) == (Phase.DAY, 1)


def test_a_tie_at_night_goes_to_the_player_who_joined_first(table: Table) -> None:
    first, second = sorted(table.villagers[:2], key=PLAYERS.index)
    table.act("kill", table.mafia[0], second)
    table.act("kill", table.mafia[1], first)
    assert table.advance()[0].data["player"] == first


def test_the_doctors_save_prevents_the_death(table: Table) -> None:
    victim = table.villagers[3]
    events = table.night(victim=victim, protect=victim)
    assert [(e.kind, dict(e.data)) for e in events[:1]] == [(Kind.SAVED, {"player": victim})]
    assert Kind.KILLED not in [e.kind for e in events]
    assert table.game.alive == PLAYERS
    table.day({})
    table.refused({"op": "protect", "player": table.doctor, "target": victim}, "two nights")
    table.act("protect", table.doctor, table.doctor)  # anyone else, themselves included


def test_a_night_without_kills_kills_nobody(table: Table) -> None:
    assert [e.kind for e in table.night()] == [Kind.PHASE]
    assert table.game.alive == PLAYERS


def test_the_detective_learns_a_team_privately(table: Table) -> None:
    events = table.act("inspect", table.detective, table.mafia[1])
    assert [(e.kind, e.audience, dict(e.data)) for e in events] == [
        (Kind.INSPECTED, table.detective, {"target": table.mafia[1], "team": "mafia"})
    ]
    table.refused(
        {"op": "inspect", "player": table.detective, "target": table.villagers[0]}, "already"
    )


def test_the_days_plurality_is_lynched_and_revealed(table: Table) -> None:
    table.night()
    target, other = table.mafia[0], table.villagers[0]
    table.act("vote", table.villagers[1], other)
    table.act("vote", table.villagers[1], target)  # a second vote replaces the first
    table.act("vote", table.villagers[2], target)
    table.act("vote", table.villagers[3], other)
    events = table.advance()
    assert [e.kind for e in events] == [Kind.LYNCHED, Kind.PHASE]
    assert dict(events[0].data) == {"player": target, "role": "mafia", "votes": 2}
    assert (table.game.phase, table.game.round, table.game.votes) == (Phase.NIGHT, 2, {})


@pytest.mark.parametrize(("votes", "reason", "tied"), [(2, "tie", 2), (0, "no votes", 0)])
def test_a_tie_or_no_vote_lynches_nobody(table: Table, votes: int, reason: str, tied: int) -> None:
    table.night()
    choices = {table.villagers[i]: table.villagers[i + 2] for i in range(votes)}
    events = table.day(choices)
    assert events[0].kind is Kind.NO_LYNCH and events[0].data["reason"] == reason
    assert len(events[0].data["tied"]) == tied
    assert table.game.alive == PLAYERS


def test_the_town_wins_when_no_mafia_is_left(table: Table) -> None:
    town_wins(table)
    game = table.game
    assert (game.phase, game.winner, game.round) == (Phase.OVER, Team.TOWN, 3)
    assert len(game.alive) == 8, "3 mafia lynched, 1 villager killed on night 2"
    won = game.events[-1]
    assert won.kind is Kind.WON and won.public and won.phase is Phase.DAY
    assert won.data["roles"][table.detective] == "detective"
    assert game.deadline_seconds() is None and not game.everyone_acted()


def test_the_mafia_wins_when_they_are_as_many_as_the_rest(table: Table) -> None:
    mafia_wins(table)
    assert (table.game.winner, len(table.game.alive)) == (Team.MAFIA, 6)


def test_everyone_acted(table: Table) -> None:
    game = table.game
    for member in table.mafia:
        assert not game.everyone_acted()
        table.act("kill", member, table.villagers[0])
    table.act("protect", table.doctor, table.villagers[1])
    assert not game.everyone_acted()
    table.act("inspect", table.detective, table.villagers[1])
    assert game.everyone_acted()
    table.advance()
    for voter in game.alive:
        assert not game.everyone_acted()
        table.act("vote", voter, table.mafia[0])
    assert game.everyone_acted()


def test_say_is_public(table: Table) -> None:
    table.night()
    (said,) = table.ok({"op": "say", "player": table.doctor, "text": "x" * 500})
    assert (said.kind, said.audience, said.data["text"]) == (Kind.SAID, EVERYONE, "x" * 500)


# -- refusals: each is refused with its reason and changes nothing ---------------------------


def command(op: str, player: str, target: str) -> dict[str, Any]:
    return {"op": op, "player": player, "target": target}


def test_votes_for_dead_or_unknown_players(table: Table) -> None:
    dead, voter = table.villagers[0], table.villagers[1]
    table.night(victim=dead)
    table.refused(command("vote", voter, dead), f"{dead} is dead")
    table.refused(command("vote", voter, "zed"), "there is no player 'zed'")
    table.refused(command("vote", "zed", voter), "there is no player 'zed'")
    table.refused({"op": "vote", "player": voter}, "'target' must be a player id")


def test_actions_out_of_phase(table: Table) -> None:
    villager, target = table.villagers[0], table.villagers[1]
    table.refused(command("vote", villager, target), "you can only vote by day; it is night 1")
    table.refused({"op": "say", "player": villager, "text": "hi"}, "only say by day")
    table.night()
    table.refused(command("kill", table.mafia[0], target), "only kill at night; it is day 1")
    table.refused(command("protect", table.doctor, target), "only protect at night")
    table.refused(command("inspect", table.detective, target), "only inspect at night")


@pytest.mark.parametrize(
    ("op", "who", "role"),
    [
        ("kill", "villager", "mafia"),
        ("kill", "detective", "mafia"),
        ("protect", "mafia", "doctor"),
        ("inspect", "doctor", "detective"),
    ],
)
def test_the_wrong_role_acting(table: Table, op: str, who: str, role: str) -> None:
    player = {"villager": table.villagers[0], "mafia": table.mafia[0]}.get(who)
    player = player or getattr(table, who)
    table.refused(command(op, player, table.villagers[1]), f"only the {role} can {op}")


def test_night_targets(table: Table) -> None:
    table.refused(command("kill", table.mafia[0], table.mafia[1]), "one of their own")
    table.refused(command("inspect", table.detective, table.detective), "themselves")


def test_acting_while_dead(table: Table) -> None:
    dead = table.villagers[0]
    table.night(victim=dead)
    table.refused({"op": "say", "player": dead, "text": "boo"}, f"{dead} is dead")
    table.refused(command("vote", dead, table.mafia[0]), f"{dead} is dead")
    table.day(everyone_votes_for(table, table.mafia[0]))
    table.refused(command("kill", table.mafia[0], table.villagers[1]), "is dead")


def test_start_twice_and_commands_before_the_start(table: Table) -> None:
    table.refused(start_command(), "the game has already started")
    lobby = Table(Game(), [], "", "", [])
    lobby.refused(command("vote", "alice", "bob"), "the game has not started")
    lobby.refused({"op": "advance", "phase": "night", "round": 1}, "has not started")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"players": PLAYERS[:11]}, "12 to 30 players, got 11"),
        ({"players": [*PLAYERS[:11], "alice"]}, "listed twice"),
        ({"players": "alice"}, "must be a list"),
        ({"seed": "7"}, "'seed' must be an integer"),
        ({"seed": True}, "'seed' must be an integer"),
        ({"day_seconds": 0}, "must be positive"),
        ({"night_seconds": float("nan")}, "must be positive"),
        ({"night_seconds": None}, "number of seconds"),
    ],
)
def test_bad_starts(change: dict[str, Any], reason: str) -> None:
    Table(Game(), [], "", "", []).refused({**start_command(), **change}, reason)


def test_stale_advances_do_nothing(table: Table) -> None:
    table.refused({"op": "advance", "phase": "day", "round": 1}, "stale advance")
    table.refused({"op": "advance", "phase": "night", "round": 2}, "stale advance")
    table.refused({"op": "advance", "phase": "night", "round": True}, "'round' an integer")
    night_1 = {"op": "advance", "phase": "night", "round": 1}
    assert isinstance(table.game.apply(night_1), Applied)
    reason = table.refused(night_1, "stale advance")
    assert reason == "stale advance: it is day 1, not night 1"


def test_malformed_commands(table: Table) -> None:
    table.refused(["op", "vote"], "a command must be a mapping")
    table.refused({}, "unknown op None")
    table.refused({"op": "dance"}, "unknown op 'dance'")
    table.night()
    for text in ("", "   ", "x" * 501, None):
        table.refused({"op": "say", "player": table.doctor, "text": text}, "'text' must be")


def test_everything_is_refused_once_the_game_is_over(table: Table) -> None:
    mafia_wins(table)
    living = table.game.alive[0]
    for refused in [
        start_command(),
        {"op": "advance", "phase": "day", "round": 3},
        {"op": "say", "player": living, "text": "gg"},
        command("vote", living, living),
        command("kill", table.mafia[0], living),
        command("protect", living, living),
        command("inspect", living, living),
        {"op": "say"},
    ]:
        assert table.refused(refused, "the game is over") == "the game is over"
