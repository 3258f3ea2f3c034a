"""Bots play by the rules, and whole bot games always end, with a winner."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Table

from mafia import Bot, Kind, MafiaError, Phase, Role, SetupError, Team, play


def bot_for(table: Table, player: str) -> Bot:
    """A bot for `player` that has been told everything addressed to it so far."""
    bot = Bot(player, seed=3)
    for event in table.game.events:
        bot.observe(event)
    return bot


@pytest.mark.slow
def test_500_seeded_bot_games_all_end_with_a_winner() -> None:
    winners = set()
    for seed in range(500):
        players = 12 + seed % 19
        game = play(players, seed)
        mafia = sum(1 for p in game.alive if game.roles[p] is Role.MAFIA)
        assert game.phase is Phase.OVER and game.winner is not None
        assert game.events[-1].kind is Kind.WON
        assert game.winner is (Team.TOWN if mafia == 0 else Team.MAFIA)
        assert mafia == 0 or mafia >= len(game.alive) - mafia
        assert game.round <= players, f"{players} players, seed {seed}: {game.round} rounds"
        winners.add(game.winner)
    assert winners == {Team.TOWN, Team.MAFIA}


@pytest.mark.parametrize("players", [11, 31])
def test_play_needs_12_to_30_players(players: int) -> None:
    with pytest.raises(SetupError, match=f"got {players}"):
        play(players)


def test_play_gives_up_after_max_rounds() -> None:
    with pytest.raises(MafiaError, match="not over after 1 rounds"):
        play(30, 0, max_rounds=1)


def test_a_bot_learns_only_what_is_addressed_to_it(table: Table) -> None:
    bot = bot_for(table, table.villagers[0])
    assert (bot.role, bot.team) == (Role.VILLAGER, [])
    mafioso = bot_for(table, table.mafia[0])
    assert (mafioso.role, mafioso.team) == (Role.MAFIA, table.mafia)
    (found,) = table.act("inspect", table.detective, table.mafia[1])
    bot.observe(found.to_dict())
    assert bot.findings == {}


def test_bots_act_once_a_phase_and_only_while_alive(table: Table) -> None:
    game = table.game
    mafioso = bot_for(table, table.mafia[0])
    (kill,) = mafioso.decide(game.view(table.mafia[0]))
    assert kill["op"] == "kill" and kill["target"] not in table.mafia
    assert mafioso.decide(game.view(table.mafia[0])) == []
    villager = bot_for(table, table.villagers[0])
    assert villager.decide(game.view(table.villagers[0])) == [], "villagers sleep at night"
    table.night(victim=table.villagers[0])
    assert villager.decide(game.view(table.villagers[0])) == [], "the dead do nothing"


def test_the_detective_votes_for_the_mafia_it_found(table: Table) -> None:
    detective = bot_for(table, table.detective)
    (inspect,) = detective.decide(table.game.view(table.detective))
    target = inspect["target"]
    for event in table.act("inspect", table.detective, target):
        detective.observe(event)
    table.advance()
    say, vote = detective.decide(table.game.view(table.detective))
    assert say["op"] == "say" and 1 <= len(say["text"]) <= 500
    if table.game.roles[target] is Role.MAFIA:
        assert vote["target"] == target and target in say["text"]
    else:
        assert vote["target"] != table.detective


def test_others_follow_the_most_accused(table: Table) -> None:
    table.night()
    accused = table.villagers[3]
    table.act("vote", table.villagers[1], accused)
    table.act("vote", table.villagers[2], accused)
    table.act("vote", table.mafia[0], table.villagers[1])
    for player in (table.doctor, table.mafia[1]):
        commands: list[dict[str, Any]] = bot_for(table, player).decide(table.game.view(player))
        assert commands[-1] == {"op": "vote", "player": player, "target": accused}
