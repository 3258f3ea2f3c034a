"""A NATS server configuration with its MQTT interface, for tests and benchmarks.

NATS speaks MQTT 3.1.1 with QoS 0/1, retained messages, Wills and persistent sessions on top
of JetStream, so `server_name` and a JetStream store directory are required. MQTT topics map
to NATS subjects level by level (`/` -> `.`, `+` -> `*`, `#` -> `>` plus the parent level),
and each user gets the topics.yaml ACL of its role as subject permissions, `%u` expanded.

What NATS cannot do like Mosquitto or the embedded broker: it has no username-as-client-id
rule (another user can take over a client id), it keeps plaintext or bcrypt passwords rather
than `$7$` hashes, and MQTT over WebSocket is not offered by this version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from broker.acl import Acl

__all__ = ["NatsUser", "nats_subjects", "render_nats_conf"]

NatsUser = tuple[str, str, str]  # (username, role, plaintext password)
# Internal subjects an MQTT client of NATS 2.9 uses for QoS 1 subscriptions and sessions.
_MQTT_INTERNAL_SUB = "$MQTT.sub.>"


def nats_subjects(mqtt_filter: str) -> list[str]:
    """The NATS subjects of an MQTT topic or filter (`a/#` is both `a` and `a.>`)."""
    levels = mqtt_filter.split("/")
    mapped = ["*" if lv == "+" else ">" if lv == "#" else lv for lv in levels]
    subject = ".".join(mapped)
    if levels[-1] == "#" and len(levels) > 1:
        return [".".join(mapped[:-1]), subject]
    return [subject]


def _permissions(acl: Acl, username: str, role: str) -> dict[str, list[str]]:
    pub = [s for p in acl.patterns(username, role, "publish") for s in nats_subjects(p)]
    sub = [s for p in acl.patterns(username, role, "subscribe") for s in nats_subjects(p)]
    return {"publish": sorted(set(pub)), "subscribe": sorted({*sub, _MQTT_INTERNAL_SUB})}


def render_nats_conf(
    acl: Acl,
    users: Iterable[NatsUser],
    *,
    client_port: int,
    mqtt_port: int,
    store_dir: str | os.PathLike[str],
    server_name: str = "mapleverse-test",
    host: str = "127.0.0.1",
) -> str:
    """nats-server configuration: client and MQTT listeners on `host`, JetStream, users."""
    entries = []
    for username, role, password in users:
        perms = _permissions(acl, username, role)
        allow_pub, allow_sub = json.dumps(perms["publish"]), json.dumps(perms["subscribe"])
        entries.append(
            f"    {{user: {json.dumps(username)}, password: {json.dumps(password)}, permissions: "
            f"{{publish: {{allow: {allow_pub}}}, subscribe: {{allow: {allow_sub}}}}}}}"
        )
    store = json.dumps(str(store_dir))
    lines = [
        "# nats-server for a Mapleverse test (broker.nats.render_nats_conf).",
        f"server_name: {json.dumps(server_name)}",
        f"host: {json.dumps(host)}",
        f"port: {client_port}",
        f"jetstream {{ store_dir: {store} }}",
        f"mqtt {{ host: {json.dumps(host)}, port: {mqtt_port} }}",
        "authorization {",
        "  users: [",
        *entries,
        "  ]",
        "}",
    ]
    return "\n".join(lines) + "\n"
