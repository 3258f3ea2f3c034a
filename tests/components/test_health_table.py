"""components.health.table: births, deaths, heartbeats and staleness, driven by explicit clocks."""

from __future__ import annotations

import pytest

from bus.payloads import ComponentHealth, Heartbeat, Status
from components.health import HealthTable

WALL = 1_764_000_000.0


def birth(epoch: int, *, kind: str = "echo", id: str = "e1", interval: float = 1.0) -> Status:
    return Status(
        state="online", kind=kind, id=id, epoch=epoch, version="9.9", heartbeat_interval=interval
    )


def death(epoch: int, *, kind: str = "echo", id: str = "e1") -> Status:
    return Status(state="offline", kind=kind, id=id, epoch=epoch)


def beat(epoch: int, seq: int) -> Heartbeat:
    return Heartbeat(epoch=epoch, seq=seq, sent=WALL)


def state(table: HealthTable, kind: str = "echo", id: str = "e1") -> tuple[str, int]:
    (row,) = [r for r in table.rows() if (r.kind, r.id) == (kind, id)]
    return row.state, row.epoch


def test_a_birth_makes_a_component_online() -> None:
    table = HealthTable()
    assert table.status(birth(5), now=10.0, wall=WALL) is True
    assert table.rows() == [
        ComponentHealth(
            kind="echo",
            id="e1",
            state="online",
            epoch=5,
            last_seq=-1,
            last_seen=WALL,
            version="9.9",
        )
    ]
    # the same birth again (a retained copy) changes nothing
    assert table.status(birth(5), now=11.0, wall=WALL + 1) is False


def test_a_death_of_the_current_epoch_makes_it_offline() -> None:
    table = HealthTable()
    table.status(birth(5), now=0.0, wall=WALL)
    assert table.status(death(5), now=1.0, wall=WALL + 1) is True
    assert state(table) == ("offline", 5)
    assert table.status(death(5), now=2.0, wall=WALL + 2) is False  # already offline


def test_an_older_epochs_death_is_ignored() -> None:
    # the Will of epoch 5 overtakes the rebirth of epoch 6 on the way to the monitor
    table = HealthTable()
    table.status(birth(5), now=0.0, wall=WALL)
    table.status(birth(6), now=1.0, wall=WALL)
    assert table.status(death(5), now=1.1, wall=WALL) is False
    assert state(table) == ("online", 6)


def test_a_death_before_its_birth_then_the_newer_birth() -> None:
    table = HealthTable()
    assert table.status(death(5), now=0.0, wall=WALL) is True  # a retained death seen first
    assert state(table) == ("offline", 5)
    assert table.status(birth(6), now=1.0, wall=WALL) is True
    assert state(table) == ("online", 6)
    assert table.status(birth(5), now=2.0, wall=WALL) is False  # an old retained birth


def test_heartbeats_record_the_sequence_and_a_new_birth_resets_it() -> None:
    table = HealthTable()
    table.status(birth(5), now=0.0, wall=WALL)
    assert table.heartbeat("echo", "e1", beat(5, 0), now=0.5, wall=WALL + 0.5) is False
    table.heartbeat("echo", "e1", beat(5, 1), now=1.0, wall=WALL + 1)
    (row,) = table.rows()
    assert (row.last_seq, row.last_seen) == (1, WALL + 1)
    table.status(birth(6), now=2.0, wall=WALL + 2)
    (row,) = table.rows()
    assert (row.epoch, row.last_seq) == (6, -1)


def test_late_beats_of_an_old_or_ended_session_are_ignored() -> None:
    table = HealthTable()
    table.status(birth(6), now=0.0, wall=WALL)
    assert table.heartbeat("echo", "e1", beat(5, 40), now=0.1, wall=WALL) is False
    (row,) = table.rows()
    assert row.last_seq == -1
    table.status(death(6), now=0.2, wall=WALL)
    assert table.heartbeat("echo", "e1", beat(6, 3), now=0.3, wall=WALL) is False
    assert state(table) == ("offline", 6)
    # a beat of a newer session than the death means it is back
    assert table.heartbeat("echo", "e1", beat(7, 0), now=0.4, wall=WALL) is True
    assert state(table) == ("online", 7)


def test_a_beat_without_a_birth_makes_it_known() -> None:
    table = HealthTable()
    assert table.heartbeat("echo", "e9", beat(3, 12), now=0.0, wall=WALL) is True
    assert state(table, id="e9") == ("online", 3)


@pytest.mark.parametrize(("missed_beats", "interval"), [(2.0, 1.0), (3.0, 0.5), (1.5, 10.0)])
def test_sweep_marks_stale_after_missed_beats_times_the_interval(
    missed_beats: float, interval: float
) -> None:
    table = HealthTable(missed_beats=missed_beats)
    table.status(birth(1, interval=interval), now=100.0, wall=WALL)
    table.heartbeat("echo", "e1", beat(1, 0), now=101.0, wall=WALL)
    deadline = 101.0 + missed_beats * interval
    assert table.next_deadline(101.0) == pytest.approx(missed_beats * interval)
    assert table.sweep(deadline - 0.001) is False
    assert state(table) == ("online", 1)
    assert table.sweep(deadline + 0.001) is True
    assert state(table) == ("stale", 1)
    assert table.sweep(deadline + 5) is False  # stale stays stale, reported once


def test_a_heartbeat_revives_a_stale_component() -> None:
    table = HealthTable(missed_beats=2)
    table.status(birth(1), now=0.0, wall=WALL)
    table.sweep(2.5)
    assert state(table) == ("stale", 1)
    assert table.heartbeat("echo", "e1", beat(1, 7), now=3.0, wall=WALL + 3) is True
    assert state(table) == ("online", 1)
    assert table.sweep(4.9) is False  # the clock restarted at the beat
    assert table.sweep(5.1) is True


def test_only_online_components_count_for_the_next_deadline() -> None:
    table = HealthTable(missed_beats=2)
    assert table.next_deadline(0.0) == 1.0  # nothing to watch
    table.status(birth(1, id="a", interval=1.0), now=0.0, wall=WALL)
    table.status(birth(1, id="b", interval=0.1), now=0.0, wall=WALL)
    assert table.next_deadline(0.0) == pytest.approx(0.2)
    table.status(death(1, id="b"), now=0.0, wall=WALL)
    assert table.next_deadline(0.5) == pytest.approx(1.5)
    assert table.next_deadline(5.0) == 0.0  # overdue: sweep now


def test_offline_entries_are_forgotten_after_forget_after() -> None:
    table = HealthTable(missed_beats=2, forget_after=60.0)
    table.status(birth(1, id="gone"), now=0.0, wall=WALL)
    table.status(birth(1, id="alive"), now=0.0, wall=WALL)
    table.status(death(1, id="gone"), now=0.0, wall=WALL)
    table.heartbeat("echo", "alive", beat(1, 0), now=59.0, wall=WALL)
    assert table.sweep(59.0) is False
    assert [r.id for r in table.rows()] == ["alive", "gone"]
    assert table.sweep(60.5) is True
    assert [r.id for r in table.rows()] == ["alive"]
    # online and stale entries are never forgotten, however long they are silent
    table.sweep(10_000.0)
    assert state(table, id="alive") == ("stale", 1)


def test_rows_are_sorted_by_kind_then_id() -> None:
    table = HealthTable()
    for kind, id in [("zeta", "a"), ("echo", "b"), ("echo", "a")]:
        table.status(birth(1, kind=kind, id=id), now=0.0, wall=WALL)
    assert [(r.kind, r.id) for r in table.rows()] == [("echo", "a"), ("echo", "b"), ("zeta", "a")]
