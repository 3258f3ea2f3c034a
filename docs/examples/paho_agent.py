"""An external agent with nothing but paho-mqtt and the documented topic contract.

    MAPLEVERSE_USERNAME=demo-agent MAPLEVERSE_PASSWORD=demo-agent-dev \\
        python docs/examples/paho_agent.py [--max-obs N]

Its username is its agent id and its MQTT client id. The broker lets it use its own topics
only (docs/agents.md):

    mv/agent/{id}/state   it joins the world by saying `ready` there, retained; its Will: `offline`
    mv/agent/{id}/obs     it subscribes: an observation every few ticks, to answer in time
    mv/agent/{id}/act     it answers each observation there, with the observation's tick
    mv/agent/{id}/error   it subscribes: why an answer was not applied (late, impossible, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST = os.environ.get("MAPLEVERSE_HOST", "127.0.0.1")
PORT = int(os.environ.get("MAPLEVERSE_PORT", "1883"))
AGENT = os.environ["MAPLEVERSE_USERNAME"]  # the agent id, also the MQTT client id
PASSWORD = os.environ["MAPLEVERSE_PASSWORD"]
ROOT = os.environ.get("MAPLEVERSE_ROOT", "mv")
STATE = f"{ROOT}/agent/{AGENT}/state"
OBS = f"{ROOT}/agent/{AGENT}/obs"
ACT = f"{ROOT}/agent/{AGENT}/act"
ERROR = f"{ROOT}/agent/{AGENT}/error"


def envelope(data: dict[str, Any], corr: str | None = None) -> bytes:
    """`data` in the Mapleverse envelope (publishing `data` alone would be accepted too)."""
    message: dict[str, Any] = {"id": uuid.uuid4().hex, "sender": AGENT, "ts": time.time(), "v": 1}
    if corr:
        message["corr"] = corr  # the id of the message this answers
    message["data"] = data
    return json.dumps(message).encode()


class Brain:
    """Walks to the nearest entity in sight and greets it once; with nobody near, wanders."""

    def __init__(self) -> None:
        self.rng = random.Random(AGENT)
        self.heading = self.rng.uniform(0, 2 * math.pi)
        self.greeted: set[str] = set()

    def decide(self, observation: dict[str, Any]) -> dict[str, Any]:
        """An Action for an Observation; it answers the observation's tick."""
        tick = observation.get("tick")
        limit = (observation.get("environment") or {}).get("max_speed", 2.0)
        here = observation.get("location")  # null until the world has placed the agent
        seen = observation.get("visible") or []  # nearest first: id, x, y, swarm, distance
        if here and seen:
            near = seen[0]
            if near["distance"] < 3 and near["id"] not in self.greeted:
                self.greeted.add(near["id"])
                return {"action": "say", "tick": tick, "params": {"text": f"hello {near['id']}"},
                        "reasoning": "a new face", "confidence": 0.9}  # fmt: skip
            if near["distance"] >= 3:
                self.heading = math.atan2(near["y"] - here["y"], near["x"] - here["x"])
                return self.move(tick, min(2.0, limit), f"walking over to {near['id']}")
        if self.rng.random() < 0.2:  # now and then, a new direction
            self.heading = self.rng.uniform(0, 2 * math.pi)
        return self.move(tick, min(1.0, limit), "wandering")

    def move(self, tick: int | None, speed: float, why: str) -> dict[str, Any]:
        dx, dy = math.cos(self.heading), math.sin(self.heading)
        return {"action": "move", "tick": tick, "params": {"dx": dx, "dy": dy, "speed": speed},
                "reasoning": why, "confidence": 0.8}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="A plain paho-mqtt Mapleverse agent.")
    parser.add_argument("--max-obs", type=int, default=0, help="leave after N (0: never)")
    args = parser.parse_args()
    brain = Brain()
    done = threading.Event()
    answered = 0
    refused: list[str] = []

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=AGENT, clean_session=True)
    client.username_pw_set(AGENT, PASSWORD)
    # Should the connection die, the broker publishes this for the agent (retained).
    client.will_set(STATE, envelope({"status": "offline"}), qos=1, retain=True)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:  # e.g. "Not authorized": wrong password, or client id != username
            refused.append(str(reason))
            done.set()
            return
        client.subscribe([(OBS, 1), (ERROR, 1)])  # on every (re)connection: the session is clean

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        # Listening now: join the world by saying so, retained (the scheduler starts observing).
        client.publish(STATE, envelope({"status": "ready"}), qos=1, retain=True)
        print(f"{AGENT}: ready, listening on {OBS}", flush=True)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal answered
        try:
            message = json.loads(msg.payload)
        except ValueError:
            return  # not JSON: bad input never crashes the agent
        data = message.get("data", message) if isinstance(message, dict) else None
        if not isinstance(data, dict):  # enveloped or bare, it must be a JSON object
            return
        if msg.topic == ERROR:  # an answer was not applied; `applied` says what was instead
            print(f"{AGENT}: error at tick {data.get('tick')}: {data.get('code')}: "
                  f"{data.get('reason')} ({data.get('applied')} applied)", flush=True)  # fmt: skip
            return
        try:
            action = brain.decide(data)
        except (KeyError, TypeError, ValueError):  # an observation it cannot make sense of
            action = {"action": "wait", "tick": data.get("tick"), "reasoning": "confused"}
        client.publish(ACT, envelope(action, corr=message.get("id")), qos=1)
        answered += 1
        print(f"{AGENT}: tick {data.get('tick')} -> {action['action']}", flush=True)
        if answered == args.max_obs:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(HOST, PORT, keepalive=30)
    except OSError as exc:
        print(f"{AGENT}: cannot connect to {HOST}:{PORT}: {exc}", file=sys.stderr)
        return 1
    client.loop_start()  # paho's network thread; it reconnects by itself
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: leave as below
        done.wait()
    if refused:
        client.loop_stop()
        print(f"{AGENT}: the broker refused the connection: {refused[0]}", file=sys.stderr)
        return 1
    # Leaving on purpose: a clean disconnect sends no Will, so publish `offline` ourselves.
    client.publish(STATE, envelope({"status": "offline"}), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    print(f"{AGENT}: answered {answered} observations, offline", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
