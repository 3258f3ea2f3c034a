"""What a Raft node persists, and the contract its store must honour.

A node persists its current term, the candidate it voted for in that term, and its log
(Raft Figure 2's "persistent state on all servers"). `RaftStorage` is the protocol;
`MemoryStorage` keeps it in memory and is what the tests and the simulation use: an instance
outlives the node it serves, as a disk does a crash.

The contract, which every implementation honours:

- **Durable before it returns.** Each call returns only once its write would survive a crash.
  The node makes its writes inside `receive` / `tick` / `propose`, before it returns the
  messages that depend on them, so a vote is on disk before the VoteResponse granting it is
  sent, and entries are on disk before the AppendResponse acknowledging them.
- **In order.** Writes take effect in the order they are made.
- **The log stays contiguous.** `append` continues the log at its last index + 1;
  `truncate_from(index)` drops `index` and everything after it.
- **Terms never go back.** `save_term_vote` with a term lower than the stored one is refused.

Fencing: a leader's writes to the *application's* store (the mesh state, not this log) carry
its term, `RaftNode.fencing_token()`, and that store must refuse a write whose token is lower
than the highest it has seen, so a leader that was paused and deposed writes nothing. That
check belongs to the store the mesh component writes to; this module only keeps Raft's own
state.

Snapshots (log compaction) are not implemented: `load` returns the whole log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from mesh.messages import LogEntry, MeshError

__all__ = ["MemoryStorage", "RaftStorage", "StorageError", "StoredState"]


class StorageError(MeshError):
    """A write that breaks the storage contract (a gap in the log, a term going back)."""


class StoredState(NamedTuple):
    """What `load` returns: the state a node restarts from."""

    term: int
    voted_for: str | None
    entries: tuple[LogEntry, ...]


class RaftStorage(Protocol):
    """Persistent state of one Raft node; every call is durable when it returns."""

    def load(self) -> StoredState:
        """The term, the vote in that term and the log, as last written."""
        ...

    def save_term_vote(self, term: int, voted_for: str | None) -> None:
        """Record the current term and the vote cast in it (None: no vote yet)."""
        ...

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Add entries at the end of the log; the first one's index is the last index + 1."""
        ...

    def truncate_from(self, index: int) -> None:
        """Drop the entry at `index` and every entry after it (1 <= index <= last index)."""
        ...


class MemoryStorage:
    """`RaftStorage` in memory, checking the contract on every write."""

    def __init__(
        self,
        term: int = 0,
        voted_for: str | None = None,
        entries: Sequence[LogEntry] = (),
    ) -> None:
        self._term = term
        self._voted_for = voted_for
        self._entries: list[LogEntry] = []
        self.writes = 0
        """Calls that changed something, for tests that count them."""
        if entries:
            self.append(entries)
            self.writes = 0

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def entries(self) -> tuple[LogEntry, ...]:
        return tuple(self._entries)

    def load(self) -> StoredState:
        return StoredState(self._term, self._voted_for, tuple(self._entries))

    def save_term_vote(self, term: int, voted_for: str | None) -> None:
        if term < self._term:
            raise StorageError(f"term {term} is lower than the stored term {self._term}")
        self._term = term
        self._voted_for = voted_for
        self.writes += 1

    def append(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        first = len(self._entries) + 1
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise StorageError(
                    f"entry index {entry.index} does not continue the log at {first + offset}"
                )
        self._entries.extend(entries)
        self.writes += 1

    def truncate_from(self, index: int) -> None:
        if not 1 <= index <= len(self._entries):
            raise StorageError(f"cannot truncate from {index}: the log has {len(self._entries)}")
        del self._entries[index - 1 :]
        self.writes += 1
