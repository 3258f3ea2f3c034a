"""The mesh: Raft leader election and log replication among the mesh managers.

The Raft core is pure (no I/O, no clock, no asyncio): `RaftNode` is driven by its caller's
ticks and messages and returns the messages to send, persisting through a `RaftStorage`.
`mesh.simulation` proves it over seeded faulty networks (`python -m mesh.simulation --seed N`);
it is imported by its own name, not from here, so that `-m` can run it.

Errors::

    MeshError               root of every error the mesh raises
    ├── MessageError        a payload that is not a valid message
    ├── StorageError        a write that breaks the storage contract
    └── RaftError           a message that would make a node break a safety rule
"""

from __future__ import annotations

from mesh.messages import (
    AppendEntries,
    AppendResponse,
    Envelope,
    LogEntry,
    MeshError,
    Message,
    MessageError,
    RequestVote,
    VoteResponse,
    message_from_dict,
)
from mesh.raft import NotLeader, Proposed, ProposeResult, RaftError, RaftNode, Role
from mesh.storage import MemoryStorage, RaftStorage, StorageError, StoredState

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "Envelope",
    "LogEntry",
    "MemoryStorage",
    "MeshError",
    "Message",
    "MessageError",
    "NotLeader",
    "ProposeResult",
    "Proposed",
    "RaftError",
    "RaftNode",
    "RaftStorage",
    "RequestVote",
    "Role",
    "StorageError",
    "StoredState",
    "VoteResponse",
    "message_from_dict",
]
