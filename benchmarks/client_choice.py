"""Which MQTT client for the bus: one Python publisher, QoS 0, through one Mosquitto.

    .venv/bin/python benchmarks/client_choice.py [--messages N]

Each client publishes N 100-byte payloads as fast as it can to the project's Mosquitto config
(started on a free port); the rate counts until the broker has them all, measured by a
`mosquitto_sub -C N` receiving them. The bus publishes a full `Probe` envelope (encoding
included), the others raw bytes. End to end the broker and the receiver bound them all alike,
so the publisher's own CPU time per message (process start-up included) is printed too, with
the ratio to paho-mqtt. The last line is `key=value` pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

TOPIC = "mv/sys/probe/choice/datagram"
PAYLOAD = b"x" * 100


async def _bus(host: str, port: int, user: str, pw: str, n: int) -> None:
    from bus import Bus, BusSettings
    from bus.payloads import Probe

    async with Bus(
        BusSettings(host=host, port=port, username=user, password=pw, clean_session=True)
    ) as bus:
        topic = bus.topics.probe.datagram(id="choice")
        probe = Probe(seq=0, text="x" * 20)
        for _ in range(n):
            await bus.publish(topic, probe)


async def _gmqtt(host: str, port: int, user: str, pw: str, n: int) -> None:
    import gmqtt

    client = gmqtt.Client(user)
    client.set_auth_credentials(user, pw)
    await client.connect(host, port, version=gmqtt.constants.MQTTv311)
    for i in range(n):
        client.publish(TOPIC, PAYLOAD, qos=0)
        if i % 1000 == 0:
            await asyncio.sleep(0)
    await client.disconnect()


async def _aiomqtt(host: str, port: int, user: str, pw: str, n: int) -> None:
    import aiomqtt

    async with aiomqtt.Client(
        host,
        port,
        username=user,
        password=pw,
        identifier=user,
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        for _ in range(n):
            await client.publish(TOPIC, PAYLOAD, qos=0)


def _paho(host: str, port: int, user: str, pw: str, n: int) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, pw)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    info = None
    for _ in range(n):
        info = client.publish(TOPIC, PAYLOAD, qos=0)
    if info is not None:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _run_one(name: str, handle, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    sub_user, sub_pw = handle.user("operator")
    pub_user, pub_pw = handle.user("component")
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            handle.host,
            "-p",
            str(handle.port),
            "-u",
            sub_user,
            "-P",
            sub_pw,
            "-i",
            sub_user,
            "-t",
            TOPIC,
            "-C",
            str(n),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # let mosquitto_sub subscribe (a benchmark, not a test)
    cmd = [
        sys.executable,
        __file__,
        "--client",
        name,
        "--host",
        handle.host,
        "--port",
        str(handle.port),
        "--user",
        pub_user,
        "--password",
        pub_pw,
        "--messages",
        str(n),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(cmd, check=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n * 1e6
    try:
        sub.wait(timeout=60)
    except subprocess.TimeoutExpired:
        sub.kill()
        return 0.0, cpu
    return n / (time.monotonic() - start), cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    if args.client:
        import uvloop

        a = (args.host, args.port, args.user, args.password, args.messages)
        if args.client == "paho":
            _paho(*a)
        else:
            uvloop.run({"bus": _bus, "gmqtt": _gmqtt, "aiomqtt": _aiomqtt}[args.client](*a))
        return 0
    import brokers

    with tempfile.TemporaryDirectory() as tmp:
        handle = brokers.start_broker("mosquitto", Path(tmp))
        try:
            rates = {
                name: _run_one(name, handle, args.messages)
                for name in ("paho", "aiomqtt", "gmqtt", "bus")
            }
        finally:
            handle.close()
    paho = rates["paho"]
    for name, (rate, cpu) in rates.items():
        print(
            f"{name:8} {rate:>10,.0f} msg/s end to end ({rate / paho[0]:.2f}x paho-mqtt)  "
            f"publisher CPU {cpu:5.2f} us/msg ({paho[1] / cpu:.2f}x paho-mqtt's efficiency)"
        )
    print(" ".join(f"{k}_msgs={round(v[0])} {k}_cpu_us={v[1]:.2f}" for k, v in rates.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
