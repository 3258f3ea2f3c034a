"""NATS configuration: MQTT filters as subjects, and the topics.yaml ACL as permissions."""

from __future__ import annotations

import pytest

from broker.acl import Acl
from broker.nats import nats_subjects, render_nats_conf
from bus.topics import load


@pytest.mark.parametrize(
    ("mqtt", "subjects"),
    [
        ("mv/agent/bob/act", ["mv.agent.bob.act"]),
        ("mv/agent/+/act", ["mv.agent.*.act"]),
        ("mv/#", ["mv", "mv.>"]),
        ("#", [">"]),
        ("+/agent/alice/obs", ["*.agent.alice.obs"]),
    ],
)
def test_subjects(mqtt: str, subjects: list[str]) -> None:
    assert nats_subjects(mqtt) == subjects


def test_config_has_server_name_jetstream_mqtt_and_per_user_permissions(tmp_path: object) -> None:
    conf = render_nats_conf(
        Acl(load(), root="+"),
        [("alice", "agent", "pw1"), ("c1", "component", "pw2")],
        client_port=4333,
        mqtt_port=1999,
        store_dir="/tmp/js",
    )
    assert 'server_name: "mapleverse-test"' in conf
    assert 'jetstream { store_dir: "/tmp/js" }' in conf
    assert 'mqtt { host: "127.0.0.1", port: 1999 }' in conf
    alice = next(line for line in conf.splitlines() if '"alice"' in line)
    assert '"*.agent.alice.act"' in alice and '"*.agent.alice.obs"' in alice
    assert "*.agent.*.act" not in alice
    assert '"$MQTT.sub.>"' in alice
