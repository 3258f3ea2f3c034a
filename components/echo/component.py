"""The echo service: answers `mv/rpc/echo/{method}` with the request's arguments.

A round-trip probe for operators (`mapleverse ping`) and for the contract suite.
"""

from __future__ import annotations

from typing import ClassVar

from bus import Bus
from bus.payloads import RpcReply, RpcRequest
from components.runtime.component import Component

__all__ = ["EchoService"]


class EchoService(Component):
    kind: ClassVar[str] = "echo"

    def serves(self) -> list[str]:
        return [*super().serves(), str(self.topics["rpc.request"].build(service="echo"))]

    async def main(self, bus: Bus) -> None:
        requests = await bus.subscribe(self.topics["rpc.request"].build(service="echo"))
        self.serving()
        async for msg in requests:
            if not msg.envelope.reply:
                continue
            request = msg.payload
            assert isinstance(request, RpcRequest)
            await bus.reply(
                msg,
                RpcReply(ok=True, result={"method": msg.params["method"], "args": request.args}),
            )
