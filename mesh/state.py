"""The mesh's replicated state machine: workers, the agents they host, and versioned state.

Every manager applies the committed log, in order, to its own `MeshState`; the commands are
plain dicts (they are the log's entries) and `apply` is deterministic, so all managers agree.

Commands (field `op`)::

    join          {"worker"}                              a worker joins (again: idempotent);
                                                          the result holds its agents' state
    leave         {"worker", "reason"}                    it leaves or is removed as failed;
                                                          its agents go with it
    add_agent     {"worker", "agent", "state"}            a new agent on that worker, version 1
    remove_agent  {"worker", "agent"}
    update        {"worker", "agent", "base", "patch"}    incremental: keys in `patch` are set,
                                                          a null removes one; `base` is the
                                                          version the worker last saw, and an
                                                          update on an older one is stale
    game          {"game", ...}                           a command of a game (mesh.games)
    create        {"at", "by"}                            records when and by whom the mesh was
                                                          created (once; again: says so)
    read          {"agent"?, "worker"?}                   changes nothing; its result is the
                                                          agents as of its place in the log,
                                                          so a deposed leader cannot answer
                                                          from a stale state

Each carries an optional `request` id: a command whose (worker, request) was applied before is
not applied again and gets the first result back, so a retried request is safe.

`apply` returns a result dict: `{"ok": true, "version": n, ...}` or
`{"ok": false, "error": "..."}`; a refused command changes nothing.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import orjson

__all__ = ["MeshState", "check_command"]

_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
REMEMBERED_REQUESTS = 256  # per worker: enough for any worker's requests in flight


def _bad_id(value: object, what: str) -> str | None:
    if not isinstance(value, str) or not _ID.match(value):
        return f"{what} must be an id of 1-64 characters [a-z0-9_-], got {value!r}"
    return None


def check_command(command: Mapping[str, Any]) -> str | None:
    """The reason `command` is malformed, or None: the checks that need no state."""
    op = command.get("op")
    if op not in {"join", "leave", "add_agent", "remove_agent", "update", "game", "read", "create"}:
        return f"unknown operation {op!r}"
    if op in {"game", "create"}:
        return None
    if op == "read":
        for key in ("agent", "worker"):
            if command.get(key) is not None and (bad := _bad_id(command[key], key)) is not None:
                return bad
        return None
    if (bad := _bad_id(command.get("worker"), "worker")) is not None:
        return bad
    agent_op = op in {"add_agent", "remove_agent", "update"}
    if agent_op and (bad := _bad_id(command.get("agent"), "agent")) is not None:
        return bad
    if op == "add_agent" and not isinstance(command.get("state", {}), dict):
        return "state must be an object"
    if op == "update":
        if not isinstance(command.get("patch"), dict):
            return "patch must be an object"
        base = command.get("base")
        if not isinstance(base, int) or isinstance(base, bool) or base < 0:
            return f"base must be the version the update is based on (0 or more), got {base!r}"
    return None


class MeshState:
    """What the committed log says: workers, agents (owner, version, state), game states."""

    def __init__(self, mesh: str) -> None:
        self.mesh = mesh
        self.applied = 0
        """Index of the last log entry applied."""
        self.workers: dict[str, list[str]] = {}
        """Worker -> the agents it hosts, in the order they were added."""
        self.agents: dict[str, dict[str, Any]] = {}
        """Agent -> {"worker", "version", "state"}."""
        self.games: dict[str, dict[str, Any]] = {}
        """Game id -> the game's state, as its rules keep it (`to_dict`)."""
        self.created: dict[str, Any] | None = None
        """When and by whom `mapleverse mesh create` created it (None: not yet)."""
        self._requests: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self.game_rules: Callable[[dict[str, Any] | None, Mapping[str, Any]], Any] | None = None
        """Set by the game wiring: `(state or None, command) -> (new state | None, result)`."""

    # -- applying ------------------------------------------------------------------------------
    def apply(self, index: int, command: Mapping[str, Any]) -> dict[str, Any]:
        """Apply log entry `index` (entries come in order; an old index is ignored)."""
        if index <= self.applied:
            return {"ok": False, "error": f"entry {index} was applied already"}
        self.applied = index
        if not command:  # a new leader's no-op
            return {"ok": True}
        bad = check_command(command)
        if bad is not None:
            return {"ok": False, "error": bad}
        worker = str(command.get("worker", "")) or "-"
        request = command.get("request")
        seen = self._requests.get(worker)
        if isinstance(request, str) and seen is not None and request in seen:
            return {**seen[request], "duplicate": True}
        result = self._apply(command)
        if isinstance(request, str):
            seen = self._requests.setdefault(worker, OrderedDict())
            seen[request] = result
            while len(seen) > REMEMBERED_REQUESTS:
                seen.popitem(last=False)
        return result

    def _apply(self, c: Mapping[str, Any]) -> dict[str, Any]:
        op = c["op"]
        if op == "game":
            return self._game(c)
        if op == "read":
            return self._read(c)
        if op == "create":
            if self.created is not None:
                return {"ok": True, "existed": True, **self.created}
            self.created = {"at": c.get("at"), "by": c.get("by")}
            return {"ok": True, "existed": False, **self.created}
        worker = c["worker"]
        if op == "join":
            self.workers.setdefault(worker, [])
            return {"ok": True, "agents": self.agents_of(worker)}
        if worker not in self.workers:
            return {"ok": False, "error": f"worker {worker!r} has not joined mesh {self.mesh!r}"}
        if op == "leave":
            for agent in self.workers.pop(worker):
                self.agents.pop(agent, None)
            self._requests.pop(worker, None)
            return {"ok": True, "reason": c.get("reason", "left")}
        agent = c["agent"]
        known = self.agents.get(agent)
        if op == "add_agent":
            if known is not None:
                return {"ok": False, "error": f"agent {agent!r} exists (on {known['worker']!r})"}
            self.agents[agent] = {"worker": worker, "version": 1, "state": dict(c.get("state", {}))}
            self.workers[worker].append(agent)
            return {"ok": True, "version": 1}
        if known is None:
            return {"ok": False, "error": f"unknown agent {agent!r}"}
        if known["worker"] != worker:
            return {"ok": False, "error": f"agent {agent!r} belongs to {known['worker']!r}"}
        if op == "remove_agent":
            del self.agents[agent]
            self.workers[worker].remove(agent)
            return {"ok": True}
        base, version = c["base"], known["version"]
        if base != version:
            return {
                "ok": False,
                "error": f"stale update: agent {agent!r} is at version {version}, "
                f"the update is based on version {base}",
                "version": version,
            }
        state = known["state"]
        for key, value in c["patch"].items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        known["version"] = version + 1
        return {"ok": True, "version": version + 1}

    def _game(self, c: Mapping[str, Any]) -> dict[str, Any]:
        game = c.get("game")
        if (bad := _bad_id(game, "game")) is not None:
            return {"ok": False, "error": bad}
        if self.game_rules is None:
            return {"ok": False, "error": "this mesh runs no games"}
        new, result = self.game_rules(self.games.get(str(game)), c)
        if new is not None:
            self.games[str(game)] = new
        return dict(result)

    def _read(self, c: Mapping[str, Any]) -> dict[str, Any]:
        agent, worker = c.get("agent"), c.get("worker")
        if agent is not None:
            if agent not in self.agents:
                return {"ok": False, "error": f"unknown agent {agent!r} in mesh {self.mesh!r}"}
            return {"ok": True, "agents": {agent: self.agent(agent)}}
        if worker is not None:
            return {"ok": True, "agents": self.agents_of(worker)}
        return {"ok": True, "agents": {a: self.agent(a) for a in self.agents}}

    # -- reading -------------------------------------------------------------------------------
    def agents_of(self, worker: str) -> dict[str, dict[str, Any]]:
        """The agents of `worker` with their versions and state (a reconnecting worker's)."""
        return {a: self.agent(a) for a in self.workers.get(worker, [])}

    def agent(self, agent: str) -> dict[str, Any]:
        known = self.agents[agent]
        return {"worker": known["worker"], "version": known["version"], "state": known["state"]}

    def dump(self) -> dict[str, Any]:
        """The whole state as JSON, a copy (what the leader persists, fenced by its term, and
        each manager's snapshot): `load` of it gives this state back."""
        data = {
            "mesh": self.mesh,
            "created": self.created,
            "applied": self.applied,
            "workers": {w: list(a) for w, a in self.workers.items()},
            "agents": {a: self.agent(a) for a in self.agents},
            "games": self.games,
            "requests": {w: list(seen.items()) for w, seen in self._requests.items()},
        }
        copied: dict[str, Any] = orjson.loads(orjson.dumps(data))  # nothing shared with us
        return copied

    def load(self, data: Mapping[str, Any]) -> None:
        """Become the state `dump` gave (a snapshot at `applied`): entries up to it are then
        ignored when the log applies them again."""
        self.created = data.get("created")
        self.applied = int(data["applied"])
        self.workers = {w: list(a) for w, a in data["workers"].items()}
        self.agents = {a: dict(v) for a, v in data["agents"].items()}
        self.games = dict(data.get("games", {}))
        self._requests = {
            w: OrderedDict((r, dict(result)) for r, result in seen)
            for w, seen in data.get("requests", {}).items()
        }
