"""Requests to a mesh's leader, retried until one answers (`rpc/mesh-{mesh}/{method}`).

Only the leader answers; while there is none (an election) a request times out and is sent
again with the same request id, so it is applied at most once however often it is sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bus import Bus, RequestTimeout
from bus.payloads import RpcRequest

__all__ = ["MeshClient", "MeshRequestError"]


class MeshRequestError(Exception):
    """The mesh refused a request, or no leader answered in time (`method`, `reason`)."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"mesh request {method!r} failed: {reason}")
        self.method = method
        self.reason = reason


class MeshClient:
    """Calls on one mesh for one worker (its id goes into every request)."""

    def __init__(
        self,
        bus: Bus,
        mesh: str,
        worker: str | None = None,
        *,
        attempt_timeout: float = 0.5,
        deadline: float = 30.0,
    ) -> None:
        self.bus = bus
        self.mesh = mesh
        self.worker = worker
        self.attempt_timeout = attempt_timeout
        self.deadline = deadline

    async def call(self, method: str, **args: Any) -> dict[str, Any]:
        """The leader's result for `method`: a dict with `ok`; MeshRequestError when the request
        is malformed or no leader answered within `deadline` seconds."""
        topic = self.bus.topics["rpc.request"].build(service=f"mesh-{self.mesh}", method=method)
        if self.worker is not None:
            args.setdefault("worker", self.worker)
        args.setdefault("request", uuid.uuid4().hex)
        give_up = time.monotonic() + self.deadline
        last = "no leader answered"
        while time.monotonic() < give_up:
            try:
                reply = await self.bus.request(
                    topic, RpcRequest(args=args), timeout=self.attempt_timeout
                )
            except RequestTimeout:
                continue
            answer = reply.payload
            if not answer.ok:
                raise MeshRequestError(method, answer.error or "refused")
            result = answer.result
            if isinstance(result, dict) and not result.get("ok", True):
                error = str(result.get("error", ""))
                if error.endswith("retry"):
                    last = error
                    await asyncio.sleep(0.05)
                    continue
            return result if isinstance(result, dict) else {"ok": True, "result": result}
        raise MeshRequestError(method, f"{last} within {self.deadline} s")
