"""The embedded broker with MAPLEVERSE_BROKER_DATA_DIR: retained messages and persistent
sessions survive a clean restart (SIGTERM, then start), with paho as the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import BrokerHandle, MqttProbe, start_broker

from broker.embedded import EmbeddedBroker
from broker.errors import BrokerStartError
from broker.persistence import STATE_FILE, BrokerState, Message, SessionState, load_state
from broker.persistence import save_state as save
from broker.settings import BrokerSettings, load_settings
from broker.users import User


class Probe(MqttProbe):
    """MqttProbe that also records `session present` and can unsubscribe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_present: bool | None = None
        self._unsubacks: set[int] = set()
        self._client.on_unsubscribe = self._on_unsubscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.session_present = bool(flags.session_present)
        super()._on_connect(client, userdata, flags, rc, props)

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        self._unsubacks.add(mid)

    def unsubscribe(self, topic_filter: str, timeout: float = 10.0) -> None:
        _, mid = self._client.unsubscribe(topic_filter)
        self._wait(lambda: mid in self._unsubacks, timeout, "UNSUBACK")


@pytest.fixture
def amqtt(tmp_path: Path) -> Iterator[BrokerHandle]:
    handle = start_broker("amqtt", tmp_path)
    yield handle
    handle.close()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def _connect(
    handle: BrokerHandle, user: tuple[str, str], probes: list[Probe], *, clean: bool = True
) -> Probe:
    probe = Probe(handle, *user, clean_session=clean)
    probes.append(probe)
    assert probe.connect() == 0
    return probe


def test_the_data_dir_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_BROKER_USERS_FILE", str(tmp_path / "users.yaml"))
    assert load_settings().data_dir is None
    monkeypatch.setenv("MAPLEVERSE_BROKER_DATA_DIR", "")
    assert load_settings().data_dir is None
    monkeypatch.setenv("MAPLEVERSE_BROKER_DATA_DIR", str(tmp_path / "state"))
    assert load_settings().data_dir == tmp_path / "state"


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    state = BrokerState(
        retained=[Message("mv/a", b"\x00\xffhi", 1)],
        sessions=[
            SessionState("c", "c", [("mv/#", 1), ("mv/x", 0)], [Message("mv/b", b"q", 1)]),
            SessionState("d", None),
        ],
    )
    path = tmp_path / "sub" / STATE_FILE
    save(path, state)
    assert load_state(path) == state
    assert [p.name for p in path.parent.iterdir()] == [STATE_FILE]  # no temporary file left
    assert load_state(tmp_path / "missing.json") == BrokerState()


def test_retained_messages_survive_a_restart(
    amqtt: BrokerHandle, root: str, probes: list[Probe]
) -> None:
    publisher = _connect(amqtt, amqtt.user("component"), probes)
    agent, _ = amqtt.user("agent")
    state_topic = f"{root}/agent/{agent}/state"
    publisher.publish(state_topic, b"\x00binary state\xff", retain=True)
    publisher.close()

    amqtt.restart()
    assert (amqtt.workdir / "data" / STATE_FILE).is_file()

    late = _connect(amqtt, amqtt.user("operator"), probes)
    assert late.subscribe(f"{root}/agent/+/state") == 1
    got = late.expect(state_topic)
    assert (got.payload, got.retain) == (b"\x00binary state\xff", True)


def test_a_qos1_message_queued_for_an_absent_session_is_delivered_after_a_restart(
    amqtt: BrokerHandle, root: str, probes: list[Probe]
) -> None:
    reader_user = amqtt.user("component")
    reader = _connect(amqtt, reader_user, probes, clean=False)
    assert reader.subscribe(f"{root}/agent/+/act") == 1
    reader.close()  # away: its session stays

    writer_user = amqtt.user("agent")
    writer = _connect(amqtt, writer_user, probes)
    act = f"{root}/agent/{writer.username}/act"
    writer.publish(act, b"while away", qos=1)
    writer.close()

    amqtt.restart()

    back = _connect(amqtt, reader_user, probes, clean=False)
    assert back.session_present is True
    assert back.expect(act).payload == b"while away"
    # the subscription itself survived: no SUBSCRIBE after the restart
    writer = _connect(amqtt, writer_user, probes)
    writer.publish(act, b"after restart", qos=1)
    back.expect(act)
    back._wait(lambda: len(back.received(act)) >= 2, 10.0, "second message")
    assert [m.payload for m in back.received(act)] == [b"while away", b"after restart"]


def test_an_unsubscribed_filter_does_not_come_back(
    amqtt: BrokerHandle, root: str, probes: list[Probe]
) -> None:
    reader_user = amqtt.user("component")
    reader = _connect(amqtt, reader_user, probes, clean=False)
    assert reader.subscribe(f"{root}/agent/+/act") == 1
    assert reader.subscribe(f"{root}/agent/+/state") == 1
    reader.unsubscribe(f"{root}/agent/+/state")
    reader.close()

    amqtt.restart()

    back = _connect(amqtt, reader_user, probes, clean=False)
    assert back.session_present is True
    writer = _connect(amqtt, amqtt.user("agent"), probes)
    writer.publish(f"{root}/agent/{writer.username}/state", b"not for the reader", qos=1)
    writer.publish(f"{root}/agent/{writer.username}/act", b"for the reader", qos=1)
    back.expect(f"{root}/agent/{writer.username}/act")
    assert back.received(f"{root}/agent/{writer.username}/state") == []


def test_a_clean_session_is_not_kept(amqtt: BrokerHandle, root: str, probes: list[Probe]) -> None:
    user = amqtt.user("component")
    first = _connect(amqtt, user, probes)
    assert first.subscribe(f"{root}/agent/+/act") == 1
    first.close()
    amqtt.restart()
    saved = json.loads((amqtt.workdir / "data" / STATE_FILE).read_text())
    assert user[0] not in [s["client_id"] for s in saved["sessions"]]
    again = _connect(amqtt, user, probes, clean=False)
    assert again.session_present is False


def _settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(
        users_file=tmp_path / "unused.yaml", port=0, ws_port=0, root="+", data_dir=tmp_path / "d"
    )


USERS = {"alice": User.create("alice", "agent", "pw-a", iterations=1)}


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": 99, "retained": [], "sessions": []}', '{"version": 1}'],
)
async def test_a_corrupt_state_file_fails_start_up_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "d" / STATE_FILE
    path.parent.mkdir()
    path.write_text(content)
    broker = EmbeddedBroker(_settings(tmp_path), users=USERS)
    with pytest.raises(BrokerStartError, match="corrupt broker state file") as caught:
        await broker.start()
    assert str(path) in str(caught.value)


async def test_the_state_is_saved_on_stop_and_restored_on_start(tmp_path: Path) -> None:
    async with EmbeddedBroker(_settings(tmp_path), users=USERS):
        pass
    path = tmp_path / "d" / STATE_FILE
    assert load_state(path) == BrokerState()
    state = BrokerState(
        retained=[Message("x/agent/alice/state", b"s", 0)],
        sessions=[SessionState("alice", "alice", [("x/agent/alice/obs", 1)], [])],
    )
    save(path, state)
    async with EmbeddedBroker(_settings(tmp_path), users=USERS):
        pass
    assert load_state(path) == state
