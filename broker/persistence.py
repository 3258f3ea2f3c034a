"""The embedded broker's state file: retained messages and persistent sessions.

`GuardedBroker` saves a `BrokerState` on a clean shutdown and restores it on start, so a restart
keeps what Mosquitto keeps with `persistence true`. The file is JSON, versioned, payloads in
base64, written atomically (a temporary file in the same directory, then a rename)::

    {"version": 1,
     "retained": [{"topic": "mv/a", "payload": "aGk=", "qos": 1}],
     "sessions": [{"client_id": "c", "username": "c",
                   "subscriptions": [{"filter": "mv/#", "qos": 1}],
                   "queued": [{"topic": "mv/a", "payload": "aGk=", "qos": 1}]}]}

`queued` holds the QoS 1/2 messages a session has not acknowledged yet, in delivery order: those
sent but not acknowledged before the shutdown first, then those queued while it was away.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import BrokerStartError

__all__ = [
    "STATE_FILE",
    "STATE_VERSION",
    "BrokerState",
    "Message",
    "SessionState",
    "load_state",
    "save_state",
]

STATE_FILE = "broker-state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int


@dataclass
class SessionState:
    client_id: str
    username: str | None
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    queued: list[Message] = field(default_factory=list)


@dataclass
class BrokerState:
    retained: list[Message] = field(default_factory=list)
    sessions: list[SessionState] = field(default_factory=list)


def _message_json(m: Message) -> dict[str, Any]:
    return {"topic": m.topic, "payload": base64.b64encode(m.payload).decode("ascii"), "qos": m.qos}


def _to_json(state: BrokerState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "retained": [_message_json(m) for m in state.retained],
        "sessions": [
            {
                "client_id": s.client_id,
                "username": s.username,
                "subscriptions": [{"filter": f, "qos": q} for f, q in s.subscriptions],
                "queued": [_message_json(m) for m in s.queued],
            }
            for s in state.sessions
        ],
    }


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object")
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}: {key!r} is missing or has the wrong type")
    return value


def _qos(obj: Any, where: str) -> int:
    qos: int = _get(obj, "qos", int, where)
    if qos not in (0, 1, 2):
        raise ValueError(f"{where}: qos {qos} is not 0, 1 or 2")
    return qos


def _message(obj: Any, where: str) -> Message:
    try:
        payload = base64.b64decode(_get(obj, "payload", str, where), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{where}: payload is not base64") from exc
    return Message(_get(obj, "topic", str, where), payload, _qos(obj, where))


def _from_json(data: Any) -> BrokerState:
    version = _get(data, "version", int, "top level")
    if version != STATE_VERSION:
        raise ValueError(f"unsupported version {version} (expected {STATE_VERSION})")
    retained = [
        _message(m, f"retained[{i}]")
        for i, m in enumerate(_get(data, "retained", list, "top level"))
    ]
    sessions = []
    for i, s in enumerate(_get(data, "sessions", list, "top level")):
        where = f"sessions[{i}]"
        username = s.get("username") if isinstance(s, dict) else None
        if username is not None and not isinstance(username, str):
            raise ValueError(f"{where}: 'username' has the wrong type")
        subs = [
            (_get(sub, "filter", str, f"{where}.subscriptions[{j}]"),
             _qos(sub, f"{where}.subscriptions[{j}]"))
            for j, sub in enumerate(_get(s, "subscriptions", list, where))
        ]  # fmt: skip
        queued = [
            _message(m, f"{where}.queued[{j}]")
            for j, m in enumerate(_get(s, "queued", list, where))
        ]
        sessions.append(SessionState(_get(s, "client_id", str, where), username, subs, queued))
    return BrokerState(retained, sessions)


def load_state(path: Path) -> BrokerState:
    """The state saved in `path` (empty if there is no file); BrokerStartError if corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return BrokerState()
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerStartError(f"cannot read the broker state file {path}: {exc}") from exc
    try:
        return _from_json(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise BrokerStartError(f"corrupt broker state file {path}: {exc}") from exc


def save_state(path: Path, state: BrokerState) -> None:
    """Write `state` to `path` atomically (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_to_json(state), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
