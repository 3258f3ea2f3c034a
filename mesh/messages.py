"""Raft's messages: frozen dataclasses with JSON-friendly `to_dict` / `from_dict`.

Every message carries its sender's term, and its sender by name (`sender` is the same field
under one name for all four). `Envelope(to, message)` is what a node hands back to be sent;
the MQTT transport publishes `envelope.message.to_dict()` to the peer named by `to`, and the
receiver rebuilds it with `message_from_dict`.

The package's errors are rooted here, in its lowest module::

    MeshError               root of every error the mesh raises
    ├── MessageError        a payload that is not a valid message (`payload`, `reason`)
    ├── StorageError        a write that breaks the storage contract (mesh.storage)
    └── RaftError           a message that would make a node break a safety rule (mesh.raft)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "Envelope",
    "LogEntry",
    "MeshError",
    "Message",
    "MessageError",
    "RequestVote",
    "VoteResponse",
    "message_from_dict",
]


class MeshError(Exception):
    """Root of every error raised by the mesh."""


class MessageError(MeshError, ValueError):
    """A payload that is not a valid Raft message; `payload` is what was received."""

    def __init__(self, reason: str, payload: object) -> None:
        self.reason = reason
        self.payload = payload
        super().__init__(f"invalid message: {reason}")


def _field(data: Mapping[str, Any], key: str, kind: type) -> Any:
    if not isinstance(data, Mapping):
        raise MessageError("not a mapping", data)
    try:
        value = data[key]
    except KeyError:
        raise MessageError(f"missing {key!r}", data) from None
    # bool is an int to Python, never to us: a term of True is a bug upstream.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"{key!r} must be {kind.__name__}, got {value!r}", data)
    return value


@dataclass(frozen=True, slots=True)
class LogEntry:
    """Entry `index` (from 1) of the replicated log, created by the leader of `term`.

    `command` is copied into a read-only mapping (shallow: keep its values immutable and
    JSON-friendly). An empty command is the no-op a leader appends when it is elected;
    `RaftNode.propose` refuses empty commands, so `is_noop` is unambiguous.
    """

    term: int
    index: int
    command: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", MappingProxyType(dict(self.command)))

    @property
    def is_noop(self) -> bool:
        return not self.command

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "index": self.index, "command": dict(self.command)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogEntry:
        return cls(
            _field(data, "term", int), _field(data, "index", int), _field(data, "command", dict)
        )


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A candidate asks for a vote in `term` (§5.2), or for a pre-vote for `term` (§9.6).

    A pre-vote request carries the term the candidate would stand in (its own term + 1); the
    receiver neither adopts that term nor records a vote.
    """

    TYPE: ClassVar[str] = "request_vote"
    term: int
    candidate: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False

    @property
    def sender(self) -> str:
        return self.candidate

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "term": self.term,
            "candidate": self.candidate,
            "last_log_index": self.last_log_index,
            "last_log_term": self.last_log_term,
            "pre_vote": self.pre_vote,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestVote:
        return cls(
            _field(data, "term", int),
            _field(data, "candidate", str),
            _field(data, "last_log_index", int),
            _field(data, "last_log_term", int),
            _field(data, "pre_vote", bool),
        )


@dataclass(frozen=True, slots=True)
class VoteResponse:
    """`voter`'s answer to a RequestVote.

    `term` is the voter's current term, except in a granted pre-vote, where it is the term the
    pre-vote was asked for (so the candidate can tell which round the grant belongs to).
    """

    TYPE: ClassVar[str] = "vote_response"
    term: int
    voter: str
    granted: bool
    pre_vote: bool = False

    @property
    def sender(self) -> str:
        return self.voter

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "term": self.term,
            "voter": self.voter,
            "granted": self.granted,
            "pre_vote": self.pre_vote,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoteResponse:
        return cls(
            _field(data, "term", int),
            _field(data, "voter", str),
            _field(data, "granted", bool),
            _field(data, "pre_vote", bool),
        )


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """The leader's heartbeat and replication (§5.3): `entries` follow `prev_log_index`."""

    TYPE: ClassVar[str] = "append_entries"
    term: int
    leader: str
    prev_log_index: int
    prev_log_term: int
    entries: tuple[LogEntry, ...]
    leader_commit: int

    @property
    def sender(self) -> str:
        return self.leader

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "term": self.term,
            "leader": self.leader,
            "prev_log_index": self.prev_log_index,
            "prev_log_term": self.prev_log_term,
            "entries": [entry.to_dict() for entry in self.entries],
            "leader_commit": self.leader_commit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppendEntries:
        entries = tuple(LogEntry.from_dict(e) for e in _field(data, "entries", list))
        prev = _field(data, "prev_log_index", int)
        if any(e.index != prev + i for i, e in enumerate(entries, start=1)):
            raise MessageError("entries must follow prev_log_index without gaps", data)
        return cls(
            _field(data, "term", int),
            _field(data, "leader", str),
            prev,
            _field(data, "prev_log_term", int),
            entries,
            _field(data, "leader_commit", int),
        )


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """`follower`'s answer to an AppendEntries.

    On success `match_index` is the last index known to match the leader's log (prev_log_index
    plus the entries of that message, not the follower's whole log). On failure
    `conflict_index` is where the leader should retry from: the follower's last index + 1 when
    its log is too short, else the first index of the term that conflicts at prev_log_index.
    """

    TYPE: ClassVar[str] = "append_response"
    term: int
    follower: str
    success: bool
    match_index: int
    conflict_index: int = 0

    @property
    def sender(self) -> str:
        return self.follower

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "term": self.term,
            "follower": self.follower,
            "success": self.success,
            "match_index": self.match_index,
            "conflict_index": self.conflict_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppendResponse:
        return cls(
            _field(data, "term", int),
            _field(data, "follower", str),
            _field(data, "success", bool),
            _field(data, "match_index", int),
            _field(data, "conflict_index", int),
        )


Message: TypeAlias = RequestVote | VoteResponse | AppendEntries | AppendResponse

_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (RequestVote, VoteResponse, AppendEntries, AppendResponse)
}


def message_from_dict(data: Mapping[str, Any]) -> Message:
    """The message a `to_dict()` payload stands for; MessageError if it stands for none."""
    kind = _field(data, "type", str)
    cls = _TYPES.get(kind)
    if cls is None:
        raise MessageError(f"unknown type {kind!r}", data)
    return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message and the node it is for."""

    to: str
    message: Message

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "message": self.message.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        return cls(_field(data, "to", str), message_from_dict(_field(data, "message", dict)))
