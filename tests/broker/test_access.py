"""Authentication and ACL on real brokers (amqtt, Mosquitto, NATS), with paho as the client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from brokers import BrokerHandle, Cap, MqttProbe

CONNACK_IDENTIFIER_REJECTED = 2
SUBACK_FAILURE = 0x80


@pytest.fixture
def probes() -> Iterator[list[MqttProbe]]:
    """Probes to close after the test."""
    made: list[MqttProbe] = []
    yield made
    for probe in made:
        probe.close()


def _connect(
    broker: BrokerHandle, role: str, probes: list[MqttProbe], **kwargs: object
) -> MqttProbe:
    probe = MqttProbe(broker, *broker.user(role), **kwargs)  # type: ignore[arg-type]
    probes.append(probe)
    assert probe.connect() == 0
    return probe


def test_wrong_password_is_refused(broker: BrokerHandle, probes: list[MqttProbe]) -> None:
    username, _ = broker.user("agent")
    probe = MqttProbe(broker, username, "not-the-password")
    probes.append(probe)
    assert probe.connect() not in (0, -1)
    assert not probe.connected.is_set()


def test_unknown_user_is_refused(broker: BrokerHandle, probes: list[MqttProbe]) -> None:
    probe = MqttProbe(broker, "nobody-at-all", "x")
    probes.append(probe)
    assert probe.connect() not in (0, -1)


def test_client_id_must_be_the_username(broker: BrokerHandle, probes: list[MqttProbe]) -> None:
    broker.require(Cap.CLIENT_ID_MUST_MATCH)
    username, password = broker.user("agent")
    probe = MqttProbe(broker, username, password, client_id=f"{username}-2")
    probes.append(probe)
    assert probe.connect() == CONNACK_IDENTIFIER_REJECTED


def test_agent_cannot_publish_to_another_agents_act(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    broker.require(Cap.ACL)
    component = _connect(broker, "component", probes)
    alice = _connect(broker, "agent", probes)
    bob_name, _ = broker.user("agent")
    assert component.subscribe(f"{root}/agent/+/act") == 1
    alice.publish(f"{root}/agent/{bob_name}/act", b"spoofed")
    alice.publish(f"{root}/agent/{alice.username}/act", b"mine")
    assert component.expect(f"{root}/agent/{alice.username}/act").payload == b"mine"
    assert component.received(f"{root}/agent/{bob_name}/act") == []
    assert alice.connected.is_set() and not alice.disconnected.is_set()


def test_agent_cannot_overwrite_another_agents_retained_state(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    broker.require(Cap.ACL)
    component = _connect(broker, "component", probes)
    alice = _connect(broker, "agent", probes)
    bob_name, _ = broker.user("agent")
    bob_state, alice_state = (
        f"{root}/agent/{bob_name}/state",
        f"{root}/agent/{alice.username}/state",
    )
    component.publish(bob_state, b"true state", retain=True)
    alice.publish(bob_state, b"overwritten", retain=True)
    alice.publish(alice_state, b"alice", retain=True)  # processed after the attempt above
    watcher = _connect(broker, "operator", probes)
    assert watcher.subscribe(alice_state) == 1
    assert watcher.expect(alice_state).payload == b"alice"
    assert watcher.subscribe(bob_state) == 1
    message = watcher.expect(bob_state)
    assert (message.payload, message.retain) == (b"true state", True)


def test_agent_cannot_subscribe_to_everything(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    """`#` is refused (SUBACK 0x80) or, on Mosquitto, granted but filtered to what it may read."""
    broker.require(Cap.ACL)
    component = _connect(broker, "component", probes)
    alice = _connect(broker, "agent", probes)
    bob_name, _ = broker.user("agent")
    for everything in (f"{root}/#", "#", f"{root}/agent/+/obs"):
        granted = alice.subscribe(everything)
        if Cap.SUBACK_REFUSAL in broker.capabilities:
            assert granted == SUBACK_FAILURE, everything
    own_obs = f"{root}/agent/{alice.username}/obs"
    assert alice.subscribe(own_obs) == 1
    component.publish(f"{root}/agent/{bob_name}/obs", b"for bob")
    component.publish(own_obs, b"for alice")
    assert alice.expect(own_obs).payload == b"for alice"
    mine = f"/agent/{alice.username}/"
    assert [m.topic for m in alice.messages if mine not in m.topic] == []


def test_component_may_subscribe_to_every_agents_act(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    component = _connect(broker, "component", probes)
    assert component.subscribe(f"{root}/agent/+/act") == 1
    operator = _connect(broker, "operator", probes)
    assert operator.subscribe(f"{root}/agent/+/state") == 1


def test_client_id_takeover_by_another_user_is_refused(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    """Bob connecting with Alice's client id neither replaces nor disconnects Alice."""
    broker.require(Cap.TAKEOVER_REFUSED)
    alice = _connect(broker, "agent", probes)
    bob_name, bob_password = broker.user("agent")
    bob = MqttProbe(broker, bob_name, bob_password, client_id=alice.username)
    probes.append(bob)
    code = bob.connect()  # amqtt refuses it; Mosquitto makes it Bob's own client id
    assert code in (0, CONNACK_IDENTIFIER_REJECTED)
    own_state = f"{root}/agent/{alice.username}/state"
    assert alice.subscribe(own_state) == 1  # alice's connection still answers
    alice.publish(own_state, b"still here")
    assert alice.expect(own_state).payload == b"still here"
    assert not alice.disconnected.is_set()


def test_will_on_a_forbidden_topic_is_dropped(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    broker.require(Cap.WILL)
    operator = _connect(broker, "operator", probes)
    assert operator.subscribe(f"{root}/agent/+/state") == 1
    bob_name, _ = broker.user("agent")
    alice_name, alice_password = broker.user("agent")
    bad = MqttProbe(
        broker, alice_name, alice_password, will=(f"{root}/agent/{bob_name}/state", b"x", 1, False)
    )
    probes.append(bad)
    assert bad.connect() == 0
    bad.drop()
    good_name, good_password = broker.user("agent")
    good_topic = f"{root}/agent/{good_name}/state"
    good = MqttProbe(broker, good_name, good_password, will=(good_topic, b"gone", 1, False))
    probes.append(good)
    assert good.connect() == 0
    good.drop()
    assert operator.expect(good_topic).payload == b"gone"
    assert operator.received(f"{root}/agent/{bob_name}/state") == []


def test_a_mafia_player_reads_only_its_own_role_and_acts_only_as_itself(
    broker: BrokerHandle, root: str, probes: list[MqttProbe]
) -> None:
    """Roles are secret by the broker, not by politeness (mesh.md, "The Mafia game")."""
    broker.require(Cap.ACL)
    component = _connect(broker, "component", probes)
    alice = _connect(broker, "agent", probes)
    bob_name, _ = broker.user("agent")
    game = f"{root}/mesh/m/game/g1"
    bobs, alices = f"{game}/player/{bob_name}", f"{game}/player/{alice.username}"
    component.publish(bobs, b"bob is the detective", retain=True)
    component.publish(alices, b"alice is a villager", retain=True)
    granted = alice.subscribe(f"{game}/player/+")
    if Cap.SUBACK_REFUSAL in broker.capabilities:
        assert granted == SUBACK_FAILURE
    granted = alice.subscribe(bobs)
    if Cap.SUBACK_REFUSAL in broker.capabilities:
        assert granted == SUBACK_FAILURE
    assert alice.subscribe(alices) == 1
    assert alice.expect(alices).payload == b"alice is a villager"
    assert [m.topic for m in alice.messages if m.topic != alices] == []
    assert component.subscribe(f"{game}/act/+") == 1
    alice.publish(f"{game}/act/{bob_name}", b"vote as bob")
    alice.publish(f"{game}/act/{alice.username}", b"vote as alice")
    assert component.expect(f"{game}/act/{alice.username}").payload == b"vote as alice"
    assert component.received(f"{game}/act/{bob_name}") == []
