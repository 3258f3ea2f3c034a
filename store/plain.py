"""A plain `sqlite3` connection on a store's SQLite file, for a hot path that writes a few
rows and waits for them (a mesh manager's Raft log).

Through the async engine each transaction hops to aiosqlite's thread and back several times
(1.5-2.5 ms on two busy cores); a plain connection does the same write in the event loop in
about 0.1 ms. It blocks the loop while it waits for SQLite's lock, so use it only on a file
nothing else in the same process writes through the async engine: a transaction there holds
the lock until the (blocked) loop runs it on, and both wait until the busy timeout.

    conn = plain_sqlite(store)   # None unless the store is a SQLite file
    ...
    conn.close()
"""

from __future__ import annotations

import sqlite3

from store.engine import Store

__all__ = ["plain_sqlite"]


def plain_sqlite(store: Store) -> sqlite3.Connection | None:
    """A new plain connection to `store`'s SQLite file, in autocommit mode (BEGIN yourself
    for more than one statement); None for any other database. The caller closes it."""
    url = store.engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    conn = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=NORMAL")  # the file is in WAL mode already (open_store)
    return conn
