"""The invariants of Raft that the simulation checks on every event (Figure 3, and one vote
per term): election safety, log matching, leader completeness, state machine safety.

`Checker` is told what each node does (`ObservedStorage` reports every write to a node's
storage) and raises `Broken` at the first violation; `mesh.simulation` turns it into the
result's `Violation`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from mesh.messages import LogEntry
from mesh.raft import RaftNode
from mesh.storage import MemoryStorage

__all__ = ["Broken", "Checker", "ObservedStorage", "same"]


class Broken(Exception):
    """Raised by the checker inside a run; becomes the result's Violation."""

    def __init__(self, invariant: str, detail: str) -> None:
        self.invariant = invariant
        self.detail = detail
        super().__init__(f"{invariant}: {detail}")


class Checker:
    """Raft's safety invariants, checked incrementally as the run goes."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.votes: dict[tuple[str, int], str] = {}
        self.seen: dict[tuple[int, int], tuple[LogEntry, int]] = {}
        self.committed: list[LogEntry] = []
        self.commit_term: list[int] = []
        """Per committed index, the lowest term a node applied it in (non-decreasing)."""
        self.leader_logs: list[tuple[int, str, tuple[LogEntry, ...]]] = []
        self.max_leader_term = 0
        self.applied_upto: dict[str, int] = {}

    def on_leader(self, node: RaftNode) -> None:
        term = node.term
        leader = self.leaders.get(term)
        if leader == node.id:
            return
        if leader is not None:
            raise Broken("election safety", f"{leader} and {node.id} both lead term {term}")
        self.leaders[term] = node.id
        log = tuple(node.log)
        # Entries committed in an earlier term than this one must all be in its log.
        for index in range(bisect_left(self.commit_term, term)):
            entry = self.committed[index]
            if index >= len(log) or not same(log[index], entry):
                raise Broken(
                    "leader completeness",
                    f"{node.id} leads term {term} without committed entry {entry.index} "
                    f"(term {entry.term}, committed by term {self.commit_term[index]})",
                )
        self.leader_logs.append((term, node.id, log))
        self.max_leader_term = max(self.max_leader_term, term)

    def on_vote(self, voter: str, term: int, candidate: str) -> None:
        given = self.votes.setdefault((voter, term), candidate)
        if given != candidate:
            raise Broken(
                "one vote per term", f"{voter} voted for {given} and {candidate} in {term}"
            )

    def on_append(self, node_id: str, log: Sequence[LogEntry], entries: Sequence[LogEntry]) -> None:
        seen = self.seen
        for entry in entries:
            index = entry.index
            prev_term = log[index - 2].term if index > 1 else 0
            known = seen.get((index, entry.term))
            if known is None:
                seen[(index, entry.term)] = (entry, prev_term)
            elif known[1] != prev_term or not same(known[0], entry):
                raise Broken(
                    "log matching",
                    f"{node_id} stored entry {index} of term {entry.term} "
                    f"({dict(entry.command)} after term {prev_term}); another log has "
                    f"{dict(known[0].command)} after term {known[1]}",
                )

    def on_applied(self, node_id: str, term: int, entries: Sequence[LogEntry]) -> None:
        expected = self.applied_upto.get(node_id, 0) + 1
        committed, commit_term = self.committed, self.commit_term
        for entry in entries:
            index = entry.index
            if index != expected:
                raise Broken(
                    "state machine safety", f"{node_id} applied {index} after {expected - 1}"
                )
            expected = index + 1
            if index <= len(committed):
                first = committed[index - 1]
                if not same(first, entry):
                    raise Broken(
                        "state machine safety",
                        f"{node_id} applied {dict(entry.command)} (term {entry.term}) at "
                        f"{index}, where {dict(first.command)} (term {first.term}) was applied",
                    )
                if term < commit_term[index - 1]:
                    commit_term[index - 1] = term
                    self._in_later_leaders(entry, term)
            else:
                committed.append(entry)
                commit_term.append(term)
                self._in_later_leaders(entry, term)
        self.applied_upto[node_id] = expected - 1

    def on_restart(self, node_id: str) -> None:
        self.applied_upto[node_id] = 0

    def _in_later_leaders(self, entry: LogEntry, term: int) -> None:
        if self.max_leader_term <= term:
            return
        for leader_term, leader, log in self.leader_logs:
            if leader_term > term and (
                len(log) < entry.index or not same(log[entry.index - 1], entry)
            ):
                raise Broken(
                    "leader completeness",
                    f"entry {entry.index} (term {entry.term}) committed by term {term} is "
                    f"not in the log {leader} had when it was elected in term {leader_term}",
                )


def same(a: LogEntry, b: LogEntry) -> bool:
    return a is b or (a.term == b.term and a.index == b.index and a.command == b.command)


class ObservedStorage(MemoryStorage):
    """MemoryStorage that shows the checker every append."""

    def __init__(self, node_id: str, checker: Checker) -> None:
        super().__init__()
        self.node_id = node_id
        self._checker = checker

    def append(self, entries: Sequence[LogEntry]) -> None:
        super().append(entries)
        self._checker.on_append(self.node_id, self._entries, entries)
