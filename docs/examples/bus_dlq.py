"""Dead letters: a payload that fails validation is dropped, counted and reported.

Sends the echo service a command it does not know, as raw bytes (any MQTT client could); the
echo service rejects it and publishes the reason on mv/sys/dlq/echo, where this script reads
it. Needs the echo service running (`make run`). Connection settings as in bus_hello.py.
"""

from __future__ import annotations

import asyncio
import sys

from bus import Bus, BusSettings, load_settings


async def main() -> int:
    settings = load_settings(BusSettings, clean_session=True)
    async with Bus(settings, kind="cli") as bus:
        letters = await bus.subscribe(bus.topics.dlq(kind="echo"))
        command_topic = bus.topics.component.command(kind="echo", id="main")
        # `explode` is not one of the Command model's commands.
        await bus.publish_bytes(command_topic, b'{"command": "explode"}', qos=1, retain=False)
        try:
            msg = await letters.get(timeout=5)
        except TimeoutError:
            print("no dead letter within 5 s: is the echo service running?", file=sys.stderr)
            return 1
        letter = msg.payload  # a DeadLetter: component, topic, reason, payload, size
        print(f"{letter.component} rejected {letter.topic}: {letter.reason}")
        print(f"the payload was: {letter.payload}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
