"""The mesh's request methods (`rpc/mesh-{mesh}/{method}`), answered by the leader.

Writes (`join`, `leave`, `add-agent`, `remove-agent`, `update`, `create`) and reads (`agents`)
go through the log, so a deposed leader can neither commit nor answer from stale state;
`status` is answered only under the leader's lease. `provision` and `terminate` are made of
those writes; `mafia-start` and `mafia-story` belong to the game master.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.mesh_manager.component import MeshManager

__all__ = ["WRITE_METHODS", "MeshRequests"]

WRITE_METHODS = {
    "join": "join",
    "leave": "leave",
    "add-agent": "add_agent",
    "remove-agent": "remove_agent",
    "update": "update",
}
METHODS = frozenset(
    {*WRITE_METHODS, "agents", "status", "create", "provision", "terminate"}
    | {"mafia-start", "mafia-story"}
)


class MeshRequests:
    """Answers one manager's requests; an unknown method or bad arguments raise (the
    component's request handling turns that into an error reply)."""

    def __init__(self, manager: MeshManager) -> None:
        self.manager = manager

    async def __call__(self, method: str, args: dict[str, Any]) -> Any:
        m = self.manager
        if method in WRITE_METHODS:
            command = {**args, "op": WRITE_METHODS[method]}
            command.setdefault("request", uuid.uuid4().hex)
            return await m.propose(command)
        if method == "agents":  # through the log: a deposed leader cannot commit it
            command = {"op": "read", "request": uuid.uuid4().hex}
            for key in ("agent", "worker"):
                if args.get(key) is not None:
                    command[key] = args[key]
            return await m.propose(command)
        if method == "status":
            if not m.has_lease():
                raise ValueError("not the leader any more; retry")
            return m.mesh_status().model_dump(mode="json")
        if method == "create":
            by = str(args.get("by", "")) or None
            return await m.propose({"op": "create", "at": time.time(), "by": by})
        if method == "provision":
            return await self.provision(args)
        if method == "terminate":
            return await self.terminate(args)
        if method == "mafia-start":
            return await m.games.start(args)
        if method == "mafia-story":
            return await m.games.story(args)
        raise KeyError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")

    async def provision(self, args: dict[str, Any]) -> dict[str, Any]:
        """A worker's place in the mesh and agents `WORKER-a1`..`-aN` for it; what it has
        already stays (so provisioning again is harmless)."""
        if "worker" not in args:
            raise ValueError("provision needs a 'worker'")
        worker, count = str(args["worker"]), int(args.get("agents", 1))
        if not 0 <= count <= 1000:
            raise ValueError(f"agents must be 0 to 1000, got {count}")
        joined = await self.manager.propose({"op": "join", "worker": worker})
        if not joined.get("ok"):
            return joined
        added: list[str] = []
        for n in range(1, count + 1):
            agent = f"{worker}-a{n}"
            if agent in joined["agents"]:
                continue
            result = await self.manager.propose(
                {"op": "add_agent", "worker": worker, "agent": agent, "state": {}}
            )
            if not result.get("ok"):
                return {**result, "added": added}
            added.append(agent)
        agents = sorted({*joined["agents"], *added})
        return {"ok": True, "worker": worker, "added": added, "agents": agents}

    async def terminate(self, args: dict[str, Any]) -> dict[str, Any]:
        """An agent out of the mesh (`agent`), or a worker with all its agents (`worker`)."""
        m = self.manager
        agent = args.get("agent")
        if agent is not None:
            known = m.state.agents.get(str(agent))
            if known is None:
                raise KeyError(f"unknown agent {agent!r} in mesh {m.mesh!r}")
            return await m.propose(
                {"op": "remove_agent", "worker": known["worker"], "agent": str(agent)}
            )
        if "worker" not in args:
            raise ValueError("terminate needs a 'worker' or an 'agent'")
        worker = str(args["worker"])
        if worker not in m.state.workers:
            raise KeyError(f"unknown worker {worker!r} in mesh {m.mesh!r}")
        return await m.propose({"op": "leave", "worker": worker, "reason": "terminated"})
