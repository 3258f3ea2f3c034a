"""The mesh's payloads on the bus (the models `topics.yaml` names for `mesh/...` topics)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bus.payloads import Payload

__all__ = [
    "AgentHealth",
    "GameAction",
    "GameEvent",
    "GameState",
    "ManagerInfo",
    "MeshLeader",
    "MeshStatus",
    "MeshTopology",
    "PlayerView",
    "RaftPacket",
    "WorkerBeat",
]

Id = str


class RaftPacket(Payload):
    """One Raft message (`mesh.messages`, as `to_dict()` gives it) for the manager `to`.

    A leader stamps each AppendEntries (`stamp`: when it sent it, on its own clock) and the
    follower's answer carries the stamp back (`answers`): the leader's lease counts from when
    it asked, not from when an answer happened to be read (after a pause, answers that waited
    in the socket would otherwise make a deposed leader believe it still leads)."""

    to: Id
    message: dict[str, Any]
    stamp: float | None = None
    answers: float | None = None


class MeshLeader(Payload):
    """The leader of a mesh, as the leader itself announced it, retained.

    The record outlives its leader: trust it only with its `term` (a message from a higher
    term, or a newer record, supersedes it)."""

    mesh: Id
    leader: Id
    term: int = Field(ge=1)
    since: float = Field(description="Wall clock when it became leader.")
    commit_index: int = Field(ge=0)


class ManagerInfo(Payload):
    id: Id
    role: Literal["leader", "follower", "candidate", "pre_candidate", "unknown"]
    term: int = Field(ge=0)
    last_seen: float | None = Field(
        default=None, description="Wall clock of its last message to the leader."
    )


class MeshStatus(Payload):
    """The mesh's status from its leader, retained: who leads, the log, worker health."""

    mesh: Id
    leader: Id
    term: int = Field(ge=1)
    commit_index: int = Field(ge=0)
    applied: int = Field(ge=0)
    managers: list[ManagerInfo]
    workers: dict[str, Literal["ok", "late", "failed"]]
    agents: int = Field(ge=0)
    updated: float


class MeshTopology(Payload):
    """Which managers there are and which agents run on which worker, retained."""

    mesh: Id
    leader: Id
    term: int = Field(ge=1)
    managers: list[Id]
    workers: dict[str, list[str]]


class WorkerBeat(Payload):
    """A worker's heartbeat, QoS 1, to every manager: its health and the state it holds."""

    mesh: Id
    worker: Id
    seq: int = Field(ge=0)
    sent: float
    interval: float = Field(gt=0, description="Seconds until the next beat.")
    versions: dict[str, int] = Field(
        default_factory=dict, description="Agent -> the state version this worker holds."
    )


class AgentHealth(Payload):
    """An agent's health as the mesh leader sees it (from its worker's beats), retained."""

    mesh: Id
    agent: Id
    worker: Id
    health: Literal["ok", "late", "failed", "removed"]
    term: int = Field(default=0, ge=0, description="The term of the leader that judged it.")
    last_beat: float | None = None
    missed: int = Field(default=0, ge=0)


class GameEvent(Payload):
    """One public event of a game (`mafia.Event.to_dict()`)."""

    game: Id
    seq: int = Field(ge=0)
    kind: str
    round: int = Field(ge=0)
    phase: str
    data: dict[str, Any] = Field(default_factory=dict)
    line: str = Field(default="", description="The event told in plain English.")


class GameState(Payload):
    """The public state of a game, retained."""

    game: Id
    phase: str
    round: int = Field(ge=0)
    players: list[str]
    alive: list[str]
    revealed: dict[str, str] = Field(description="Player -> role, for the dead (all at the end).")
    votes: dict[str, str] = Field(default_factory=dict)
    deadline: float | None = Field(default=None, description="Wall clock the phase ends at.")
    winner: str | None = None
    bots: list[str] = Field(default_factory=list)
    host: str | None = Field(default=None, description="The worker that plays the bots.")


class PlayerView(Payload):
    """What one player alone may know, retained on its own topic."""

    game: Id
    player: Id
    role: str | None
    team: list[str] = Field(default_factory=list, description="The mafia, for the mafia.")
    phase: str
    round: int = Field(ge=0)
    alive: list[str]
    private: list[dict[str, Any]] = Field(
        default_factory=list, description="Events for this player alone (role, findings)."
    )
    reply: dict[str, Any] | None = Field(
        default=None, description="The answer to the player's last action: ok, or why not."
    )


class GameAction(Payload):
    """A player's action; the player is the topic's `{agent}`."""

    op: Literal["say", "vote", "kill", "protect", "inspect"]
    target: Id | None = None
    text: str | None = Field(default=None, max_length=500)
    player: Id | None = Field(
        default=None, description="Optional; when given it must be the topic's agent."
    )
