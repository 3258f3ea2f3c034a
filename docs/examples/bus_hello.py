"""Hello, bus: subscribe to a topic, publish three messages on it, read them back.

    MAPLEVERSE_USERNAME=operator MAPLEVERSE_PASSWORD=... .venv/bin/python docs/examples/bus_hello.py

The broker comes from MAPLEVERSE_HOST, MAPLEVERSE_PORT, MAPLEVERSE_USERNAME,
MAPLEVERSE_PASSWORD and MAPLEVERSE_ROOT (docs/bus.md). Prints one line per message received.
"""

from __future__ import annotations

import asyncio

from bus import Bus, BusSettings, load_settings
from bus.payloads import Probe


async def main() -> None:
    # MAPLEVERSE_* variables, validated: a bad value raises SettingsError naming the variable.
    # A short-lived script asks for a clean session (nothing is kept for it after it leaves).
    settings = load_settings(BusSettings, clean_session=True)
    async with Bus(settings, kind="hello") as bus:
        # Topics are built from topics.yaml, never written by hand: mv/sys/probe/hello/echo.
        topic = bus.topics.probe.echo(id="hello")
        # Awaiting the subscription returns once the broker has acknowledged it.
        messages = await bus.subscribe(topic)
        for seq in range(3):
            # QoS and retain come from the topic's declaration (QoS 1, not retained).
            await bus.publish(topic, Probe(seq=seq, text="hello"))
        async for msg in messages:  # validated Probe payloads, in publish order
            print(f"{msg.topic} seq={msg.payload.seq} text={msg.payload.text}", end=" ")
            print(f"from {msg.envelope.sender}")
            if msg.payload.seq == 2:
                break


if __name__ == "__main__":
    asyncio.run(main())
