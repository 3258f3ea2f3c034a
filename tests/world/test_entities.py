"""The entity table: removing rows keeps every id at its own position, velocity and swarm."""

from __future__ import annotations

import numpy as np

from world.entities import EntityTable


def test_removing_any_rows_keeps_the_table_consistent() -> None:
    rng = np.random.default_rng(3)
    table = EntityTable(capacity=4)
    n = 500
    ids = [f"e{i}" for i in range(n)]
    xs = rng.uniform(0, 100, n)
    table.add(
        {"id": ids, "x": xs.tolist(), "y": (xs * 2).tolist(), "vx": (-xs).tolist(),
         "vy": [0.0] * n, "swarm": ["a" if i % 3 else "b" for i in range(n)], "ov": list(range(n))}
    )  # fmt: skip
    alive = set(ids)
    for _ in range(40):
        rows = rng.choice(len(table), size=min(len(table), int(rng.integers(1, 30))), replace=False)
        gone = table.remove(rows)
        assert len(set(gone.id)) == len(rows) and set(gone.id) <= alive
        alive -= set(gone.id)
        assert set(table.ids) == alive and len(table) == len(alive)
        for entity, row in table.index.items():
            i = int(entity[1:])
            assert table.ids[row] == entity
            assert table.pos[row].tolist() == [xs[i], xs[i] * 2]
            assert table.vel[row, 0] == -xs[i] and table.ov[row] == i
            assert table.swarms[table.group[row]] == ("a" if i % 3 else "b")
        some = np.sort(rng.choice(len(table), size=min(len(table), 7), replace=False))
        assert table.ids_of(some) == [table.ids[r] for r in some]
        assert table.swarms_of(some) == [table.swarms[table.group[r]] for r in some]
        everyone = np.arange(len(table))
        assert table.ids_of(everyone) == table.ids
        assert table.ids_of(everyone) is not table.ids  # a copy: the table may change after
        assert table.swarms_of(everyone) == ["a" if int(e[1:]) % 3 else "b" for e in table.ids]
