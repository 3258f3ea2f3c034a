"""Dealing the roles: how many of each, which rosters are refused, and the same deal per seed."""

from __future__ import annotations

from collections import Counter

import pytest

from mafia import MafiaError, Role, SetupError, Team, assign_roles


def roster(count: int) -> list[str]:
    return [f"p{i:02d}" for i in range(count)]


@pytest.mark.parametrize(("players", "mafia"), [(12, 3), (15, 3), (16, 4), (29, 7), (30, 7)])
def test_a_quarter_are_mafia_with_one_detective_and_one_doctor(players: int, mafia: int) -> None:
    roles = assign_roles(roster(players), seed=1)
    counts = Counter(roles.values())
    assert counts[Role.MAFIA] == mafia
    assert counts[Role.DETECTIVE] == 1
    assert counts[Role.DOCTOR] == 1
    assert counts[Role.VILLAGER] == players - mafia - 2
    assert list(roles) == roster(players), "the roles are listed in join order"


@pytest.mark.parametrize("players", [0, 11, 31])
def test_too_few_or_too_many_players_is_a_setup_error(players: int) -> None:
    with pytest.raises(SetupError, match=f"12 to 30 players, got {players}") as raised:
        assign_roles(roster(players), seed=1)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, MafiaError)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("Alice", "bad player id"),
        ("a b", "bad player id"),
        ("", "bad player id"),
        ("all", "reserved"),
        ("p00", "listed twice"),
    ],
)
def test_bad_ids_are_setup_errors(bad: str, reason: str) -> None:
    with pytest.raises(SetupError, match=reason):
        assign_roles([*roster(11), bad], seed=1)


def test_the_same_seed_deals_the_same_roles_and_seeds_differ() -> None:
    players = roster(20)
    assert assign_roles(players, 42) == assign_roles(players, 42)
    deals = {tuple(assign_roles(players, seed).values()) for seed in range(20)}
    assert len(deals) > 15


def test_teams() -> None:
    assert Role.MAFIA.team is Team.MAFIA
    assert {r.team for r in (Role.DETECTIVE, Role.DOCTOR, Role.VILLAGER)} == {Team.TOWN}
