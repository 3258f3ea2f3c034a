"""A high-rate stream: many records per MQTT message, in columns.

Publishes 5,000 drone positions through a batching publisher on mv/sys/probe/drones/stream
and reads them back as rows. Connection settings as in bus_hello.py.
"""

from __future__ import annotations

import asyncio

from bus import Bus, BusSettings, load_settings, rows

RECORDS = 5000


async def main() -> None:
    settings = load_settings(BusSettings, clean_session=True)
    async with Bus(settings, kind="stream") as bus:
        topic = bus.topics.probe.stream(id="drones")  # declared with the Batch payload, QoS 0
        batches = await bus.subscribe(topic)
        # A batch goes out when the next record would not fit the broker's packet limit, when
        # it holds max_records, or max_delay seconds after its first record.
        async with bus.batcher(topic, fields=("id", "x", "y"), max_delay=0.005) as batcher:
            for i in range(RECORDS):
                # add() never blocks; add_async() also waits while earlier batches queue up.
                await batcher.add_async((f"d{i % 50}", float(i), -float(i)))
        # Leaving the block flushed the last batch.
        received = messages = 0
        while received < RECORDS:
            msg = await batches.get(timeout=5)
            # On the wire: {"n": 1234, "columns": {"id": [...], "x": [...], "y": [...]}}
            received += len(rows(msg.payload))  # [("d0", 0.0, -0.0), ("d1", 1.0, -1.0), ...]
            messages += 1
        print(f"sent {RECORDS} records in {batcher.batches} messages", end="; ")
        print(f"received {received} records in {messages} messages")


if __name__ == "__main__":
    asyncio.run(main())
