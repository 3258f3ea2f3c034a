"""One Raft node: pure and deterministic, driven by its caller.

The node does no I/O and reads no clock. Its caller hands it the time and the messages:

- `tick(now)` fires its timers: a follower or candidate whose randomised election timeout
  (uniform in [lo, hi), drawn again at every reset) has run out starts an election; a leader
  sends AppendEntries to every peer each `heartbeat_interval`. `next_deadline()` says when the
  next tick has work to do.
- `receive(message, now)` handles one message.
- `propose(command, now)` appends a command when the node leads (`Proposed`), and otherwise
  answers `NotLeader` naming the leader it knows of and its term.

Each returns the envelopes to send; `take_applied()` hands over the entries committed since the
last call, in log order, for the state machine (no-op entries included: skip `entry.is_noop`).
Every write to storage is made inside those calls, before they return, so sending what they
return after they return is always safe (a vote is durable before it is sent).

The rules are Raft's (Ongaro and Ousterhout, §5), with these choices:

- Pre-vote (Ongaro's thesis, §9.6; on by default): a node whose election timeout runs out first
  asks for pre-votes for term + 1 without changing its term. A peer grants one when that term
  is above its own, the candidate's log is at least as up-to-date as its own, and it has not
  heard from a leader within the minimum election timeout (a leader never grants one). Only
  with a majority of pre-votes does the node become a candidate, so a node cut off by a
  partition cannot come back and depose a working leader by its inflated term.
- Any message with a higher term makes the receiver adopt the term and step down, except the
  two that carry a proposed term: a pre-vote request, and a pre-vote granted in answer to it.
- A new leader appends a no-op entry of its term, so entries of earlier terms get committed
  with it (§5.4.2: only entries of the current term are committed by counting replicas).
- A vote already given to a candidate is given again when it asks again (QoS 1 redelivers);
  duplicate and reordered AppendEntries never truncate entries that match, and a stale
  AppendResponse moves nothing backwards.
- Replication: a peer is probed (one AppendEntries per heartbeat or per rejection) until it
  answers success; from then on new entries are sent as they are proposed, without waiting
  for acknowledgements. A heartbeat names the last index sent: a peer that lost entries on the
  way refuses it, and is probed again from the index it gives back.

Fencing: `fencing_token()` is the term while the node leads. Every write the leader makes to
the application's store carries it, and the store refuses a token lower than the highest it has
seen: a leader paused and deposed can write nothing once a newer one has written.

Membership changes and snapshots are not implemented: the peers are fixed, the log is whole.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from mesh.messages import (
    AppendEntries,
    AppendResponse,
    Envelope,
    LogEntry,
    MeshError,
    Message,
    RequestVote,
    VoteResponse,
)
from mesh.storage import RaftStorage

__all__ = ["NotLeader", "ProposeResult", "Proposed", "RaftError", "RaftNode", "Role"]

_NO_OUTPUT: list[Envelope] = []


class RaftError(MeshError):
    """A message that would make this node break a safety rule: the cluster is broken.

    Raised when a second leader shows up in the node's own term while it leads, or when the
    leader's log conflicts with an entry this node has already committed. Neither can happen
    between correct nodes; the node refuses to go on rather than lose a committed entry.
    """


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    """Asking for pre-votes; still a follower in its term (it has not incremented it)."""
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Proposed:
    """The command is entry `index` of the leader's log in `term`; not yet committed."""

    index: int
    term: int
    messages: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class NotLeader:
    """This node does not lead; `leader_id` is the leader it knows of in `term`, if any."""

    leader_id: str | None
    term: int


ProposeResult: TypeAlias = Proposed | NotLeader


class RaftNode:
    """A Raft node named `node_id` among `peers`, persisting to `storage`.

    `peers` names the cluster's other nodes (the node's own name, if listed, is left out); the
    cluster is fixed, and a majority is more than half of it.

    Times are seconds on the caller's clock. `rng` draws the election timeouts; seed it for a
    deterministic node. On construction the node loads its term, vote and log from `storage`
    and starts as a follower with nothing committed (entries are applied again as they are
    committed again, from index 1).

    An AppendEntries carries at most `max_batch` entries and, when `entry_size` is given, at
    most `max_batch_bytes` of them by that measure (always at least one entry), so a batch
    fits the transport's packet limit.
    """

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        storage: RaftStorage,
        *,
        rng: random.Random,
        election_timeout: tuple[float, float] = (0.3, 0.6),
        heartbeat_interval: float = 0.1,
        pre_vote: bool = True,
        max_batch: int = 64,
        max_batch_bytes: int | None = None,
        entry_size: Callable[[LogEntry], int] | None = None,
    ) -> None:
        lo, hi = election_timeout
        if not 0 < heartbeat_interval < lo < hi:
            raise ValueError(
                "need 0 < heartbeat_interval < election_timeout[0] < election_timeout[1], "
                f"got {heartbeat_interval} and {election_timeout}"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.id = node_id
        self.peers = tuple(sorted(set(peers) - {node_id}))
        self._peer_set = frozenset(self.peers)
        self._quorum = (len(self.peers) + 1) // 2 + 1
        self._storage = storage
        self._rng = rng
        self._lo = lo
        self._spread = hi - lo
        self._heartbeat = heartbeat_interval
        self._pre_vote = pre_vote
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._entry_size = entry_size

        state = storage.load()
        self._term = state.term
        self._voted_for = state.voted_for
        self._log: list[LogEntry] = list(state.entries)

        self._role = Role.FOLLOWER
        self._leader_id: str | None = None
        self._leader_contact: float | None = None
        self._commit = 0
        self._last_applied = 0
        self._applied: list[LogEntry] = []
        self._election_deadline: float | None = None
        self._heartbeat_due = 0.0
        self._votes: set[str] = set()
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._probing: set[str] = set()

    # -- observable state ----------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def leader_id(self) -> str | None:
        """The leader of the current term, when this node knows it (itself when leading)."""
        return self._leader_id

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def last_applied(self) -> int:
        """The last index handed to `take_applied` (or waiting there to be taken)."""
        return self._last_applied

    @property
    def log(self) -> Sequence[LogEntry]:
        """The log, entry i at position i - 1. A live view: read it, never change it."""
        return self._log

    @property
    def last_log_index(self) -> int:
        return len(self._log)

    @property
    def last_log_term(self) -> int:
        return self._log[-1].term if self._log else 0

    def fencing_token(self) -> int | None:
        """The term while this node leads, else None: stamp it on every write to the store."""
        return self._term if self._role is Role.LEADER else None

    def next_deadline(self) -> float | None:
        """When `tick` next has work to do; None before the first tick or receive."""
        if self._role is Role.LEADER:
            return self._heartbeat_due
        return self._election_deadline

    def take_applied(self) -> list[LogEntry]:
        """The entries committed since the last call, in log order."""
        applied = self._applied
        if applied:
            self._applied = []
        return applied

    # -- driving the node ----------------------------------------------------------------

    def tick(self, now: float) -> list[Envelope]:
        """Fire the timers due at `now`: an election, or the leader's heartbeats."""
        if self._role is Role.LEADER:
            if now < self._heartbeat_due:
                return _NO_OUTPUT
            self._heartbeat_due = now + self._heartbeat
            return self._heartbeats()
        if self._election_deadline is None:
            self._reset_election_timer(now)
            return _NO_OUTPUT
        if now < self._election_deadline:
            return _NO_OUTPUT
        if self._pre_vote:
            return self._become_pre_candidate(now)
        return self._become_candidate(now)

    def receive(self, message: Message, now: float) -> list[Envelope]:
        """Handle one message from a peer; messages from strangers are ignored."""
        if self._election_deadline is None:
            self._reset_election_timer(now)
        if message.sender not in self._peer_set:
            return _NO_OUTPUT
        kind = type(message)
        if kind is AppendEntries:
            return self._on_append(message, now)  # type: ignore[arg-type]
        if kind is AppendResponse:
            return self._on_append_response(message, now)  # type: ignore[arg-type]
        if kind is RequestVote:
            return self._on_request_vote(message, now)  # type: ignore[arg-type]
        return self._on_vote_response(message, now)  # type: ignore[arg-type]

    def propose(self, command: Mapping[str, Any], now: float) -> ProposeResult:
        """Append `command` to the log if this node leads; it commits once a majority has it."""
        if not command:
            raise ValueError("an empty command is the leader's no-op; propose a non-empty one")
        if self._role is not Role.LEADER:
            return NotLeader(self._leader_id, self._term)
        entry = self._append_own(command)
        messages = tuple(
            self._append_to(peer)
            for peer in self.peers
            if peer not in self._probing and self._next[peer] == entry.index
        )
        return Proposed(entry.index, self._term, messages)

    # -- elections -----------------------------------------------------------------------

    def _reset_election_timer(self, now: float) -> None:
        self._election_deadline = now + self._lo + self._rng.random() * self._spread

    def _leader_alive(self, now: float) -> bool:
        """Whether this node leads or heard from its leader within the minimum timeout."""
        if self._role is Role.LEADER:
            return True
        return (
            self._leader_id is not None
            and self._leader_contact is not None
            and now - self._leader_contact < self._lo
        )

    def _log_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log whose last term is later, or equal and at least as long, is as good."""
        my_term = self.last_log_term
        return last_term > my_term or (last_term == my_term and last_index >= len(self._log))

    def _save_term_vote(self, term: int, voted_for: str | None) -> None:
        self._storage.save_term_vote(term, voted_for)
        self._term = term
        self._voted_for = voted_for

    def _become_follower(self, term: int, now: float, leader: str | None = None) -> None:
        """Step down into `term`. The election timer runs on, as §5.2 has it (it is reset by a
        leader's append or a vote granted), unless this node led and so had none running."""
        if term > self._term:
            self._save_term_vote(term, None)
        if self._role is Role.LEADER:
            self._reset_election_timer(now)
        self._role = Role.FOLLOWER
        self._leader_id = leader
        self._votes = set()

    def _become_pre_candidate(self, now: float) -> list[Envelope]:
        self._role = Role.PRE_CANDIDATE
        self._leader_id = None
        self._votes = {self.id}
        self._reset_election_timer(now)
        if len(self._votes) >= self._quorum:
            return self._become_candidate(now)
        request = RequestVote(
            self._term + 1, self.id, len(self._log), self.last_log_term, pre_vote=True
        )
        return [Envelope(peer, request) for peer in self.peers]

    def _become_candidate(self, now: float) -> list[Envelope]:
        self._save_term_vote(self._term + 1, self.id)
        self._role = Role.CANDIDATE
        self._leader_id = None
        self._votes = {self.id}
        self._reset_election_timer(now)
        if len(self._votes) >= self._quorum:
            return self._become_leader(now)
        request = RequestVote(self._term, self.id, len(self._log), self.last_log_term)
        return [Envelope(peer, request) for peer in self.peers]

    def _become_leader(self, now: float) -> list[Envelope]:
        self._role = Role.LEADER
        self._leader_id = self.id
        self._votes = set()
        self._probing = set(self.peers)
        self._match = dict.fromkeys(self.peers, 0)
        self._next = dict.fromkeys(self.peers, len(self._log) + 1)
        self._heartbeat_due = now + self._heartbeat
        self._append_own({})
        return [self._append_to(peer) for peer in self.peers]

    def _on_request_vote(self, m: RequestVote, now: float) -> list[Envelope]:
        if m.pre_vote:
            granted = (
                m.term > self._term
                and self._log_up_to_date(m.last_log_index, m.last_log_term)
                and not self._leader_alive(now)
            )
            answer = VoteResponse(m.term if granted else self._term, self.id, granted, True)
            return [Envelope(m.candidate, answer)]
        if m.term > self._term:
            self._become_follower(m.term, now)
        if m.term < self._term:
            granted = False
        elif self._voted_for == m.candidate:
            granted = True  # the same vote again: the request was redelivered
        elif self._voted_for is None and self._log_up_to_date(m.last_log_index, m.last_log_term):
            self._save_term_vote(self._term, m.candidate)  # durable before it is sent
            self._reset_election_timer(now)
            granted = True
        else:
            granted = False
        return [Envelope(m.candidate, VoteResponse(self._term, self.id, granted))]

    def _on_vote_response(self, m: VoteResponse, now: float) -> list[Envelope]:
        if m.pre_vote:
            if not m.granted:
                if m.term > self._term:
                    self._become_follower(m.term, now)
                return _NO_OUTPUT
            if self._role is Role.PRE_CANDIDATE and m.term == self._term + 1:
                self._votes.add(m.voter)
                if len(self._votes) >= self._quorum:
                    return self._become_candidate(now)
            return _NO_OUTPUT
        if m.term > self._term:
            self._become_follower(m.term, now)
            return _NO_OUTPUT
        if self._role is Role.CANDIDATE and m.term == self._term and m.granted:
            self._votes.add(m.voter)
            if len(self._votes) >= self._quorum:
                return self._become_leader(now)
        return _NO_OUTPUT

    # -- replication: the follower's side -------------------------------------------------

    def _on_append(self, m: AppendEntries, now: float) -> list[Envelope]:
        if m.term < self._term:
            return [Envelope(m.leader, AppendResponse(self._term, self.id, False, 0, 0))]
        if m.term == self._term and self._role is Role.LEADER:
            raise RaftError(f"{self.id}: {m.leader} also claims to lead term {m.term}")
        if m.term > self._term or self._role is not Role.FOLLOWER:
            self._become_follower(m.term, now, m.leader)
        self._leader_id = m.leader
        self._leader_contact = now
        self._reset_election_timer(now)

        prev = m.prev_log_index
        log = self._log
        if prev > len(log):
            return [self._reject(m, len(log) + 1)]
        if prev and log[prev - 1].term != m.prev_log_term:
            if prev <= self._commit:
                raise RaftError(
                    f"{self.id}: leader {m.leader} of term {m.term} conflicts with committed "
                    f"entry {prev} (term {log[prev - 1].term}, leader says {m.prev_log_term})"
                )
            conflict_term = log[prev - 1].term
            first = prev
            while first - 1 > self._commit and log[first - 2].term == conflict_term:
                first -= 1
            return [self._reject(m, first)]

        for offset, entry in enumerate(m.entries):
            index = entry.index
            if index <= len(log):
                if log[index - 1].term == entry.term:
                    continue  # already there: a duplicate or an older copy of this append
                if index <= self._commit:
                    raise RaftError(
                        f"{self.id}: leader {m.leader} of term {m.term} would overwrite "
                        f"committed entry {index}"
                    )
                self._storage.truncate_from(index)
                del log[index - 1 :]
            fresh = m.entries[offset:]
            self._storage.append(fresh)
            log.extend(fresh)
            break

        match = prev + len(m.entries)
        if m.leader_commit > self._commit:
            self._commit_to(min(m.leader_commit, match))
        return [Envelope(m.leader, AppendResponse(self._term, self.id, True, match, 0))]

    def _reject(self, m: AppendEntries, conflict_index: int) -> Envelope:
        return Envelope(m.leader, AppendResponse(self._term, self.id, False, 0, conflict_index))

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        self._commit = index
        self._applied.extend(self._log[self._last_applied : index])
        self._last_applied = index

    # -- replication: the leader's side ---------------------------------------------------

    def _append_own(self, command: Mapping[str, Any]) -> LogEntry:
        entry = LogEntry(self._term, len(self._log) + 1, command)
        self._storage.append((entry,))
        self._log.append(entry)
        if not self.peers:
            self._commit_to(entry.index)
        return entry

    def _append_to(self, peer: str) -> Envelope:
        """AppendEntries for `peer` from its next index; advances it unless the peer is probed."""
        prev = self._next[peer] - 1
        entries = tuple(self._log[prev : prev + self._max_batch])
        if self._max_bytes is not None and self._entry_size is not None and len(entries) > 1:
            total = 0
            for n, entry in enumerate(entries):  # at least one, however large
                total += self._entry_size(entry)
                if n and total > self._max_bytes:
                    entries = entries[:n]
                    break
        prev_term = self._log[prev - 1].term if prev else 0
        if peer not in self._probing:
            self._next[peer] = prev + len(entries) + 1
        message = AppendEntries(self._term, self.id, prev, prev_term, entries, self._commit)
        return Envelope(peer, message)

    def _heartbeats(self) -> list[Envelope]:
        """An AppendEntries to each peer: the probe again, or whatever was held back, or
        nothing but `prev_log_index`, which a peer that lost entries on the way refuses
        (starting a probe from where it stands)."""
        return [self._append_to(peer) for peer in self.peers]

    def _on_append_response(self, m: AppendResponse, now: float) -> list[Envelope]:
        if m.term > self._term:
            self._become_follower(m.term, now)
            return _NO_OUTPUT
        if self._role is not Role.LEADER or m.term < self._term:
            return _NO_OUTPUT
        peer = m.follower
        if not m.success:
            next_index = max(self._match[peer] + 1, min(m.conflict_index, self._next[peer]))
            if next_index >= self._next[peer] and peer in self._probing:
                return _NO_OUTPUT  # stale or duplicate: that probe is already out
            self._probing.add(peer)
            self._next[peer] = next_index
            return [self._append_to(peer)]
        if m.match_index > self._match[peer]:
            self._match[peer] = m.match_index
            self._maybe_commit()
        if self._next[peer] <= m.match_index:
            self._next[peer] = m.match_index + 1
        if peer in self._probing:
            self._probing.discard(peer)  # found where the logs match: replicate from there
            more = self._next[peer] <= len(self._log)
        else:  # everything sent is acknowledged, and a batch limit held some back
            more = self._next[peer] <= len(self._log) and self._match[peer] == self._next[peer] - 1
        return [self._append_to(peer)] if more else _NO_OUTPUT

    def _maybe_commit(self) -> None:
        """§5.4.2: commit the highest index a majority holds, if it is of the current term."""
        matches = sorted(self._match.values(), reverse=True)
        # The leader holds its whole log: with it, the quorum-th highest is matches[quorum - 2].
        index = matches[self._quorum - 2]
        if index > self._commit and self._log[index - 1].term == self._term:
            self._commit_to(index)
