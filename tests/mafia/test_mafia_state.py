"""Snapshots round-trip exactly, replicas agree, and a player's view keeps others' secrets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Table

from mafia import (
    EVERYONE,
    NAMES,
    Applied,
    Bot,
    Event,
    Game,
    Kind,
    Phase,
    Role,
    SnapshotError,
    play,
    tell,
)

ROOT = Path(__file__).resolve().parents[2]


def through_json(game: Game) -> Game:
    return Game.from_dict(json.loads(json.dumps(game.to_dict())))


def test_a_snapshot_mid_night_round_trips_and_plays_on_the_same(table: Table) -> None:
    victim = table.villagers[0]
    table.act("kill", table.mafia[1], victim)
    table.act("kill", table.mafia[0], victim)
    table.act("protect", table.doctor, table.villagers[1])
    table.act("inspect", table.detective, table.mafia[2])
    copy = through_json(table.game)
    assert copy == table.game
    assert copy.to_dict() == table.game.to_dict()
    assert (copy.kills, copy.protected, copy.inspected) == (
        {table.mafia[0]: victim, table.mafia[1]: victim},
        table.villagers[1],
        table.mafia[2],
    )
    rest: list[dict[str, Any]] = [
        {"op": "kill", "player": table.mafia[2], "target": table.villagers[2]},
        {"op": "advance", "phase": "night", "round": 1},
        {"op": "vote", "player": table.villagers[1], "target": table.mafia[0]},
        {"op": "advance", "phase": "day", "round": 1},
        {"op": "protect", "player": table.doctor, "target": table.villagers[1]},
    ]
    for command in rest:
        assert table.game.apply(command) == copy.apply(command)
    assert copy.to_dict() == table.game.to_dict()
    assert copy.last_protected == table.villagers[1]


@pytest.mark.parametrize("seed", range(3))
def test_finished_games_round_trip(seed: int) -> None:
    game = play(12 + seed * 9, seed)
    assert through_json(game) == game


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"phase": "dusk"}, "'phase' is not a Phase"),
        ({"round": "1"}, "'round' has the wrong type"),
        ({"alive": ["nobody"]}, "'alive' must be players"),
        ({"votes": {"alice": "nobody"}}, "between living players"),
        ({"protected": "nobody"}, "must be players"),
        ({"winner": "nobody"}, "'winner' is not a Team"),
        ({"events": [{"seq": 2}]}, "missing 'kind'"),
    ],
)
def test_bad_snapshots_are_refused(table: Table, change: dict[str, Any], reason: str) -> None:
    with pytest.raises(SnapshotError, match=reason) as raised:
        Game.from_dict({**table.game.to_dict(), **change})
    assert isinstance(raised.value, ValueError)


def test_a_snapshot_missing_a_field_is_refused(table: Table) -> None:
    data = table.game.to_dict()
    del data["seed"]
    with pytest.raises(SnapshotError, match="missing 'seed'"):
        Game.from_dict(data)


def test_misnumbered_events_are_refused(table: Table) -> None:
    data = table.game.to_dict()
    data["events"] = data["events"][1:]
    with pytest.raises(SnapshotError, match="numbered"):
        Game.from_dict(data)


def test_events_round_trip_and_cannot_be_changed(table: Table) -> None:
    event = table.game.events[0]
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    as_dict = event.to_dict()
    as_dict["data"]["players"].append("mallory")
    assert "mallory" not in event.data["players"]
    with pytest.raises(TypeError):
        event.data["mafia"] = 0  # type: ignore[index]


def test_the_same_seed_plays_the_same_game_and_tells_the_same_story() -> None:
    first, second = play(17, 11), play(17, 11)
    assert first.to_dict() == second.to_dict()
    assert tell(first.events) == tell(second.events)
    assert play(17, 12).to_dict() != first.to_dict()


def test_replicas_agree_whatever_their_hash_seed() -> None:
    """Replicas are separate processes: nothing may depend on the order of a set or dict."""
    script = (
        "import hashlib, json, mafia\n"
        "game = mafia.play(23, 5)\n"
        "text = json.dumps([game.to_dict(), mafia.tell(game.events)])\n"
        "print(hashlib.sha256(text.encode()).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    game = play(23, 5)
    text = json.dumps([game.to_dict(), tell(game.events)])
    assert digests == {hashlib.sha256(text.encode()).hexdigest()}


# -- views ---------------------------------------------------------------------------------


def bot_game(players: int, seed: int) -> Iterator[Game]:
    """A game played by bots, yielded after every phase's moves and once it is over."""
    names = list(NAMES[:players])
    game = Game()
    bots = {name: Bot(name, seed * 100 + i) for i, name in enumerate(names)}

    def run(command: dict[str, Any]) -> None:
        outcome = game.apply(command)
        assert isinstance(outcome, Applied), outcome
        for event in outcome.events:
            for bot in bots.values() if event.public else [bots[event.audience]]:
                bot.observe(event.to_dict() if seed % 2 else event)

    start = {"op": "start", "players": names, "seed": seed, "day_seconds": 1, "night_seconds": 1}
    run(start)
    while game.phase is not Phase.OVER:
        for name in list(game.alive):
            for command in bots[name].decide(game.view(name)):
                run(command)
        yield game
        run({"op": "advance", "phase": str(game.phase), "round": game.round})
    yield game


def disclosed_roles(view: dict[str, Any]) -> set[str]:
    """Every player whose role (not just team) the view discloses, in any of its parts."""
    disclosed = set(view["revealed"]) | set(view["team"])
    if view["role"] is not None:
        disclosed.add(view["player"])
    for event in view["events"]:
        data = event["data"]
        if event["kind"] in ("killed", "lynched"):
            disclosed.add(data["player"])
        elif event["kind"] == "won":
            disclosed |= set(data["roles"])
        elif event["kind"] == "role":
            disclosed |= set(data.get("team", []))
    return disclosed


@pytest.mark.parametrize("seed", range(6))
def test_a_view_never_shows_another_players_unrevealed_role(seed: int) -> None:
    for game in bot_game(12 + seed * 3, seed):
        mafia = {p for p in game.players if game.roles[p] is Role.MAFIA}
        for player in [*game.players, "spectator"]:
            view = game.view(player)
            json.dumps(view)
            assert {e["audience"] for e in view["events"]} <= {EVERYONE, player}
            may_know = {p for p in game.players if game.phase is Phase.OVER or p not in game.alive}
            may_know |= {player} | (mafia if player in mafia else set())
            assert disclosed_roles(view) <= may_know, (player, game.phase, game.round)


def test_at_the_start_a_villager_sees_only_their_own_role(table: Table) -> None:
    view = table.game.view(table.villagers[0])
    assert (view["role"], view["team"], view["revealed"]) == ("villager", [], {})
    assert [e["kind"] for e in view["events"]] == ["started", "role", "phase"]
    assert "detective" not in json.dumps(view) and "doctor" not in json.dumps(view)
    mafia_view = table.game.view(table.mafia[0])
    assert mafia_view["team"] == table.mafia
    detective = table.game.view(table.detective)
    table.act("inspect", table.detective, table.mafia[0])
    later = table.game.view(table.detective, since=detective["events"][-1]["seq"])
    assert [e["kind"] for e in later["events"]] == [Kind.INSPECTED]
    assert table.game.view(table.doctor, since=table.game.seq)["events"] == []
