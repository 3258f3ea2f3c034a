"""An external agent with nothing but paho-mqtt and the documented topic contract.

    MAPLEVERSE_USERNAME=demo-agent MAPLEVERSE_PASSWORD=demo-agent-dev \\
        python docs/examples/paho_agent.py [--max-obs N]

Its username is its agent id and its MQTT client id. The broker lets it use its own topics
only (docs/agents.md):

    mv/agent/{id}/state   it publishes its state there, retained; its Will says `offline`
    mv/agent/{id}/obs     it subscribes: the observations sent to it
    mv/agent/{id}/act     it answers each observation there, the observation's id as `corr`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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


def envelope(data: dict[str, Any], corr: str | None = None) -> bytes:
    """`data` in the Mapleverse envelope (publishing `data` alone would be accepted too)."""
    message: dict[str, Any] = {"id": uuid.uuid4().hex, "sender": AGENT, "ts": time.time(), "v": 1}
    if corr:
        message["corr"] = corr  # the id of the message this answers
    message["data"] = data
    return json.dumps(message).encode()


def decide(observation: dict[str, Any]) -> dict[str, Any]:
    """The agent's brain: an Action for an Observation. This one always steps east."""
    tick = observation.get("tick", 0)
    return {"action": "move", "params": {"dx": 1, "dy": 0}, "reasoning": f"tick {tick}: east"}


def main() -> int:
    parser = argparse.ArgumentParser(description="A plain paho-mqtt Mapleverse agent.")
    parser.add_argument("--max-obs", type=int, default=0, help="leave after N (0: never)")
    args = parser.parse_args()
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
        client.subscribe(OBS, qos=1)  # on every (re)connection: the session is clean

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        # Listening now: say so, retained, so whoever looks later sees the current state.
        client.publish(STATE, envelope({"status": "ready"}), qos=1, retain=True)
        print(f"{AGENT}: ready, listening on {OBS}", flush=True)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal answered
        try:
            message = json.loads(msg.payload)
        except ValueError:
            return  # not JSON: bad input never crashes the agent
        if not isinstance(message, dict):
            return
        observation = message.get("data", message)  # enveloped, or a bare Observation
        if not isinstance(observation, dict):
            return
        action = decide(observation)
        client.publish(ACT, envelope(action, corr=message.get("id")), qos=1)
        answered += 1
        print(f"{AGENT}: tick {observation.get('tick')} -> {action['action']}", flush=True)
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
