"""tests/brokers.py itself: fresh users, restarts on the same port, kill, pause and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from brokers import BrokerHandle, Cap, MqttProbe, start_broker


def test_users_are_fresh_and_the_pool_says_when_it_is_used_up(tmp_path: Path) -> None:
    handle = start_broker("amqtt", tmp_path, pool_sizes={"agent": 2, "operator": 1})
    try:
        first, second = handle.user("agent"), handle.user("agent")
        assert first != second and first[0].startswith("agent-")
        with pytest.raises(RuntimeError, match="pool of agent users is used up"):
            handle.user("agent")
        with pytest.raises(KeyError, match="no users of role 'device'"):
            handle.user("device")
    finally:
        handle.close()


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown broker kind 'rabbit'"):
        start_broker("rabbit", tmp_path)


@pytest.mark.chaos
def test_restart_keeps_the_port_and_persisted_state(
    private_broker: BrokerHandle, root: str
) -> None:
    port = private_broker.port
    writer = MqttProbe(private_broker, *private_broker.user("component"))
    assert writer.connect() == 0
    topic = f"{root}/agent/someone/state"
    writer.publish(topic, b"kept", retain=True)
    writer.close()
    private_broker.restart()
    assert private_broker.port == port and private_broker.running
    reader = MqttProbe(private_broker, *private_broker.user("operator"))
    assert reader.connect() == 0
    assert reader.subscribe(topic) == 1
    if Cap.PERSISTENCE in private_broker.capabilities:
        assert reader.expect(topic).payload == b"kept"
    reader.close()


@pytest.mark.chaos
def test_kill_then_start(private_broker: BrokerHandle) -> None:
    probe = MqttProbe(private_broker, *private_broker.user("agent"))
    assert probe.connect() == 0
    private_broker.kill()
    assert probe.disconnected.wait(10)
    assert not private_broker.running
    private_broker.start()
    again = MqttProbe(private_broker, *private_broker.user("agent"))
    assert again.connect() == 0
    again.close()
    probe.close()


@pytest.mark.chaos
def test_pause_stops_answering_until_resume(private_broker: BrokerHandle) -> None:
    private_broker.pause()
    probe = MqttProbe(private_broker, *private_broker.user("agent"))
    with pytest.raises(TimeoutError):
        probe.connect(timeout=0.5)  # a paused broker must not answer at all
    private_broker.resume()
    assert probe.wait_connack() == 0
    probe.close()
