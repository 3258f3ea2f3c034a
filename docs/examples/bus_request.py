"""Request/reply: call a service over MQTT and wait for its answer.

    .venv/bin/python docs/examples/bus_request.py                  # the echo service
    .venv/bin/python docs/examples/bus_request.py greeter hello    # docs/examples/greeter.py

The request goes to mv/rpc/{service}/{method}; the envelope names this client's reply topic
(mv/reply/{client id}) and a correlation id. Connection settings as in bus_hello.py.
"""

from __future__ import annotations

import asyncio
import sys

from bus import Bus, BusSettings, RequestTimeout, load_settings
from bus.payloads import RpcRequest


async def main(service: str, method: str) -> int:
    settings = load_settings(BusSettings, clean_session=True)
    async with Bus(settings, kind="cli") as bus:
        topic = bus.topics.rpc.request(service=service, method=method)
        try:
            reply = await bus.request(topic, RpcRequest(args={"name": "ada"}), timeout=5)
        except RequestTimeout as exc:  # nobody answered: is the service running?
            print(exc, file=sys.stderr)
            return 1
        # An RpcReply: ok and a result, or an error; the envelope says who answered.
        if reply.payload.ok:
            print(f"{reply.envelope.sender} answered: {reply.payload.result}")
        else:
            print(f"{reply.envelope.sender} refused: {reply.payload.error}")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    service = args[0] if args else "echo"
    method = args[1] if len(args) > 1 else "ping"
    sys.exit(asyncio.run(main(service, method)))
