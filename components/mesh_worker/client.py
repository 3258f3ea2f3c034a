"""Requests to a mesh's leader, retried until one answers (`rpc/mesh-{mesh}/{method}`).

Only the leader answers; while there is none (an election) a request times out and is sent
again with the same request id, so it is applied at most once however often it is sent. The
client also follows the retained leader record: when a new leader announces itself, a
request waiting for an answer is sent again at once instead of waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from bus import Bus, BusError, Message, RequestTimeout, Subscription
from bus.payloads import RpcReply, RpcRequest
from bus.topics import Topic
from mesh.payloads import MeshLeader

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
        self.leader: MeshLeader | None = None
        """The newest leader record seen (trust it with its term)."""
        self._new_leader = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop following the leader record."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _follow_leader(self, sub: Subscription) -> None:
        try:
            async for msg in sub:  # until the bus closes (or close() cancels it)
                record = msg.payload
                if self.leader is None:  # the retained record: where things stand
                    self.leader = record
                elif record.term > self.leader.term:  # an election since: ask again now
                    self.leader = record
                    self._new_leader.set()
        except BusError:
            pass
        finally:
            await sub.close()

    async def _attempt(self, topic: Topic, args: dict[str, Any]) -> Message[RpcReply] | None:
        """One request; None when it timed out or a new leader came meanwhile."""
        self._new_leader.clear()
        request = asyncio.ensure_future(
            self.bus.request(topic, RpcRequest(args=args), timeout=self.attempt_timeout)
        )
        changed = asyncio.ensure_future(self._new_leader.wait())
        try:
            await asyncio.wait({request, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        if not request.done():
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError, RequestTimeout):
                await request
            return None
        try:
            return request.result()
        except RequestTimeout:
            return None

    async def call(self, method: str, **args: Any) -> dict[str, Any]:
        """The leader's result for `method`: a dict with `ok`; MeshRequestError when the request
        is malformed or no leader answered within `deadline` seconds."""
        topic = self.bus.topics["rpc.request"].build(service=f"mesh-{self.mesh}", method=method)
        if self._watch is None:
            sub = self.bus.subscribe(self.bus.topics["mesh.leader"].build(mesh=self.mesh))
            await sub.start()
            self._watch = asyncio.get_running_loop().create_task(self._follow_leader(sub))
        if self.worker is not None:
            args.setdefault("worker", self.worker)
        args.setdefault("request", uuid.uuid4().hex)
        give_up = time.monotonic() + self.deadline
        last = "no leader answered"
        while time.monotonic() < give_up:
            reply = await self._attempt(topic, args)
            if reply is None:
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
