"""A new component in one file: the greeter answers requests on mv/rpc/greeter/{method}.

    MAPLEVERSE_USERNAME=... MAPLEVERSE_PASSWORD=... .venv/bin/python docs/examples/greeter.py
    .venv/bin/python docs/examples/bus_request.py greeter hello     # in another terminal

The runtime (components.runtime.Component) gives it what every component has: a retained birth
and death on mv/sys/component/greeter/main/status, heartbeats, commands (rebirth, stop, drain,
set-log-level), /metrics when MAPLEVERSE_METRICS_PORT is set, a clean exit on SIGTERM.
A component of the platform lives in its own package, is listed in components/registry.py and
runs with `mapleverse component NAME` (docs/components.md); this file starts itself the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import ClassVar

from pydantic import Field

from bus import Bus, SettingsError, load_settings
from bus.payloads import RpcReply
from components.runtime import Component, ComponentSettings


class GreeterSettings(ComponentSettings):
    """Every component setting, plus MAPLEVERSE_GREETING."""

    greeting: str = Field(default="hello", min_length=1, description="the word of welcome")


class Greeter(Component):
    kind: ClassVar[str] = "greeter"  # its topics: mv/sys/component/greeter/{id}/...
    settings_model: ClassVar[type[ComponentSettings]] = GreeterSettings
    settings: GreeterSettings

    def serves(self) -> list[str]:
        # Announced in the birth: its command topic and the requests it answers.
        return [*super().serves(), str(self.topics.rpc.request(service="greeter"))]

    async def main(self, bus: Bus) -> None:
        # The component's own work, until it stops. A payload that is not an RpcRequest never
        # gets here: the bus drops it, counts it and reports it on mv/sys/dlq/greeter.
        requests = await bus.subscribe(self.topics.rpc.request(service="greeter"))
        self.serving()  # subscribed: the birth goes out now, and requests will be answered
        async for msg in requests:
            if not msg.envelope.reply:
                continue  # nobody is waiting for an answer
            method = msg.params["method"]  # from the topic: mv/rpc/greeter/{method}
            if method != "hello":
                await bus.reply(msg, RpcReply(ok=False, error=f"no method {method!r}"))
                continue
            name = msg.payload.args.get("name", "stranger")
            await bus.reply(msg, RpcReply(ok=True, result=f"{self.settings.greeting}, {name}"))


def main() -> int:
    # What `mapleverse component NAME` does (components/runtime/runner.py).
    try:
        settings = load_settings(GreeterSettings)
    except SettingsError as exc:  # e.g. "MAPLEVERSE_GREETING: expected ..., got ''"
        for problem in exc.problems:
            print(f"greeter: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        greeter = Greeter(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, greeter.stop)  # leave with a retained `offline`
        await greeter.run()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
