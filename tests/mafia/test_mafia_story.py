"""The story of a game: one line a phase, the winner, then everyone's role; no secrets."""

from __future__ import annotations

from conftest import PLAYERS, Table

from mafia import play, tell


def everyone_votes_for(table: Table, target: str) -> dict[str, str]:
    return {p: target for p in table.game.alive if p != target}


def test_a_scripted_game_is_told_night_by_night_and_day_by_day(table: Table) -> None:
    assert table.mafia == ["dave", "heidi", "leo"], "seed 7 deals these roles"
    assert (table.detective, table.doctor) == ("kate", "ivan")
    table.night(victim="alice", inspect="dave")
    table.day({"bob": "dave", "carol": "heidi"})
    table.night(victim="bob", protect="bob")
    table.day(everyone_votes_for(table, "dave"))
    table.night()
    table.day({})
    table.night(victim="carol")
    table.day(everyone_votes_for(table, "heidi"))
    table.night(victim="erin")
    table.day(everyone_votes_for(table, "leo"))
    assert tell(table.game.events) == [
        f"12 players sit down: {', '.join(PLAYERS)}. 3 of them are mafia.",
        "Night 1: the mafia killed alice, a villager.",
        "Day 1: the vote was tied between dave and heidi; nobody was lynched.",
        "Night 2: the mafia attacked bob, but the doctor saved them.",
        "Day 2: the town lynched dave (10 votes), a member of the mafia.",
        "Night 3: the mafia killed nobody.",
        "Day 3: nobody voted; nobody was lynched.",
        "Night 4: the mafia killed carol, a villager.",
        "Day 4: the town lynched heidi (8 votes), a member of the mafia.",
        "Night 5: the mafia killed erin, a villager.",
        "Day 5: the town lynched leo (6 votes), a member of the mafia.",
        "The town wins after 5 days.",
        "The mafia: dave, heidi and leo.",
        "The detective: kate.",
        "The doctor: ivan.",
        "The villagers: alice, bob, carol, erin, frank, grace and judy.",
    ]


def test_a_mafia_win_at_night() -> None:
    game = play(12, 0)
    story = tell(game.events)
    assert story[-5] == f"The mafia wins after {game.round} nights."
    assert story[-4].startswith("The mafia: ")


def test_the_story_leaves_private_events_out_and_takes_dicts() -> None:
    game = play(20, 3)
    public = [e for e in game.events if e.public]
    assert len(public) < len(game.events)
    story = tell(game.events)
    assert story == tell(public) == tell([e.to_dict() for e in game.events])
    assert not any("inspect" in line for line in story)
    before_the_end = story[:-5]  # the winner, then the four roles
    assert not any(line.startswith("The detective") for line in before_the_end)
