"""The embedded broker in-process: listeners, ports, and amqtt's CONNECT handling fixed.

These speak raw MQTT 3.1.1 over asyncio streams, so each packet and return code is visible.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from broker.embedded import EmbeddedBroker
from broker.errors import BrokerStartError
from broker.settings import BrokerSettings
from broker.users import User

TIMEOUT = 10.0
USERS = {
    u.name: u
    for u in [
        User.create("alice", "agent", "pw-a", iterations=1),
        User.create("bob", "agent", "pw-b", iterations=1),
        User.create("comp", "component", "pw-c", iterations=1),
    ]
}


def _str(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([kind]) + bytes(encoded) + body


def connect_packet(
    client_id: str, username: str, password: str, *, clean: bool = True,
    will: tuple[str, bytes] | None = None,
) -> bytes:  # fmt: skip
    flags = 0xC0 | (0x02 if clean else 0) | (0x2C if will else 0)  # will: QoS 1, retain
    payload = _str(client_id)
    if will:
        payload += _str(will[0]) + _str(will[1])
    payload += _str(username) + _str(password)
    return _packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + payload)


def publish_packet(topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bytes:
    header = 0x30 | (qos << 1) | int(retain)
    return _packet(header, _str(topic) + (struct.pack("!H", 7) if qos else b"") + payload)


def subscribe_packet(topic_filter: str, packet_id: int = 1) -> bytes:
    return _packet(0x82, struct.pack("!H", packet_id) + _str(topic_filter) + b"\x01")


class Raw:
    """One raw MQTT connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, broker: EmbeddedBroker) -> Raw:
        return cls(*await asyncio.open_connection(broker.host, broker.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self) -> tuple[int, bytes]:
        """(first byte, body) of the next packet; EOFError when the broker closed."""
        try:
            first = (await asyncio.wait_for(self.reader.readexactly(1), TIMEOUT))[0]
            length, shift = 0, 0
            while True:
                byte = (await self.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            return first, await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise EOFError from None

    async def connack(self, packet: bytes) -> tuple[int, int]:
        """Send CONNECT; (session present, return code)."""
        await self.send(packet)
        first, body = await self.read()
        assert first == 0x20
        return body[0], body[1]

    async def expect(self, kind: int) -> bytes:
        """The body of the next packet of `kind` (high nibble), skipping others."""
        while True:
            first, body = await self.read()
            if first >> 4 == 3 and first & 0x06:  # a QoS 1 PUBLISH: acknowledge it
                (topic_len,) = struct.unpack("!H", body[:2])
                await self.send(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])
            if first >> 4 == kind >> 4:
                return body

    async def closed(self) -> bool:
        try:
            while True:
                await self.read()
        except EOFError:
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    settings = BrokerSettings(users_file=tmp_path / "unused.yaml", port=0, ws_port=0, root="+")
    async with EmbeddedBroker(settings, users=USERS) as b:
        yield b


async def test_context_manager_exposes_the_bound_ports(broker: EmbeddedBroker) -> None:
    assert broker.port > 0 and broker.ws_port is None
    assert broker.ready_line == f"mapleverse-broker listening tcp=127.0.0.1:{broker.port} ws=off"
    raw = await Raw.open(broker)
    assert await raw.connack(connect_packet("alice", "alice", "pw-a")) == (0, 0)
    raw.close()


async def test_port_in_use_falls_back_to_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = BrokerSettings(users_file=tmp_path / "u.yaml", port=port, ws_port=0)
        with caplog.at_level(logging.WARNING, logger="broker.server"):
            async with EmbeddedBroker(settings, users=USERS) as b:
                assert b.port > port
                assert f"port {port} is in use; using {b.port}" in caplog.text
        strict = settings.model_copy(update={"port_fallback": False})
        with pytest.raises(BrokerStartError, match=f"127.0.0.1:{port}"):
            await EmbeddedBroker(strict, users=USERS).start()


async def test_websocket_listener_speaks_mqtt(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ws_port = probe.getsockname()[1]
    settings = BrokerSettings(users_file=tmp_path / "u.yaml", port=0, ws_port=ws_port)
    async with EmbeddedBroker(settings, users=USERS) as b:
        assert b.ws_port == ws_port
        assert b.ready_line.endswith(f"ws=127.0.0.1:{ws_port}")
        url = f"ws://127.0.0.1:{ws_port}/"
        async with websockets.connect(url, subprotocols=[websockets.Subprotocol("mqtt")]) as ws:
            await ws.send(connect_packet("alice", "alice", "pw-a"))
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x20\x02\x00\x00"


async def test_refused_connect_leaves_the_live_client_alone(broker: EmbeddedBroker) -> None:
    """A wrong password or another user using alice's client id does not kick alice."""
    alice = await Raw.open(broker)
    assert await alice.connack(connect_packet("alice", "alice", "pw-a", clean=False)) == (0, 0)
    for packet, code in [
        (connect_packet("alice", "alice", "wrong"), 5),
        (connect_packet("alice", "alice", "wrong", clean=False), 5),
        (connect_packet("alice", "bob", "pw-b"), 2),
        (connect_packet("alice", "bob", "pw-b", clean=False), 2),
    ]:
        intruder = await Raw.open(broker)
        assert await intruder.connack(packet) == (0, code)
        assert await intruder.closed()
    await alice.send(b"\xc0\x00")  # PINGREQ
    assert await alice.expect(0xD0) == b""  # PINGRESP: still connected
    alice.close()


async def test_empty_client_id_becomes_the_username(broker: EmbeddedBroker) -> None:
    first = await Raw.open(broker)
    assert await first.connack(connect_packet("", "alice", "pw-a")) == (0, 0)
    second = await Raw.open(broker)
    assert await second.connack(connect_packet("alice", "alice", "pw-a")) == (0, 0)
    assert await first.closed()  # taken over: same client id
    second.close()


async def test_takeover_by_the_same_user_closes_the_old_connection_without_its_will(
    broker: EmbeddedBroker,
) -> None:
    watcher = await Raw.open(broker)
    assert await watcher.connack(connect_packet("comp", "comp", "pw-c")) == (0, 0)
    await watcher.send(subscribe_packet("t1/agent/+/state"))
    assert (await watcher.expect(0x90))[-1] == 1
    old = await Raw.open(broker)
    will = ("t1/agent/alice/state", b"will")
    assert await old.connack(connect_packet("alice", "alice", "pw-a", clean=False, will=will)) == (
        0,
        0,
    )
    new = await Raw.open(broker)
    assert await new.connack(connect_packet("alice", "alice", "pw-a", clean=False)) == (1, 0)
    assert await old.closed()
    await new.send(publish_packet("t1/agent/alice/state", b"after"))
    body = await watcher.expect(0x30)
    assert body.endswith(b"after"), body  # the first state seen is not the Will
    new.close()
    watcher.close()


async def test_persistent_session_queues_and_retained_is_not_resent(
    broker: EmbeddedBroker,
) -> None:
    comp = await Raw.open(broker)
    assert await comp.connack(connect_packet("comp", "comp", "pw-c")) == (0, 0)
    await comp.send(publish_packet("t1/agent/alice/obs", b"retained", retain=True))
    await comp.expect(0x40)
    alice = await Raw.open(broker)
    assert await alice.connack(connect_packet("alice", "alice", "pw-a", clean=False)) == (0, 0)
    await alice.send(subscribe_packet("t1/agent/alice/obs"))
    assert (await alice.expect(0x90))[-1] == 1
    assert (await alice.expect(0x30)).endswith(b"retained")
    await alice.send(b"\xe0\x00")  # DISCONNECT
    assert await alice.closed()
    await comp.send(publish_packet("t1/agent/alice/obs", b"while away"))
    await comp.expect(0x40)
    again = await Raw.open(broker)
    assert await again.connack(connect_packet("alice", "alice", "pw-a", clean=False)) == (1, 0)
    assert (await again.expect(0x30)).endswith(b"while away")
    await comp.send(publish_packet("t1/agent/alice/obs", b"marker"))
    assert (await again.expect(0x30)).endswith(b"marker")  # no second copy of "retained"
    again.close()
    comp.close()


async def test_packets_over_the_limit_disconnect(tmp_path: Path) -> None:
    settings = BrokerSettings(
        users_file=tmp_path / "u.yaml", port=0, ws_port=0, root="+", max_packet_size=1024
    )
    async with EmbeddedBroker(settings, users=USERS) as b:
        comp = await Raw.open(b)
        assert await comp.connack(connect_packet("comp", "comp", "pw-c")) == (0, 0)
        await comp.send(publish_packet("t1/agent/x/obs", b"a" * 900))
        assert await comp.expect(0x40) == struct.pack("!H", 7)  # PUBACK
        await comp.send(publish_packet("t1/agent/x/obs", b"a" * 1100))
        assert await comp.closed()


async def test_reload_users_from_the_file(tmp_path: Path) -> None:
    from broker.users import save_users

    path = tmp_path / "users.yaml"
    save_users(path, [USERS["alice"]])
    settings = BrokerSettings(users_file=path, port=0, ws_port=0)
    async with EmbeddedBroker(settings) as b:
        bob = await Raw.open(b)
        assert await bob.connack(connect_packet("bob", "bob", "pw-b")) == (0, 5)
        save_users(path, [USERS["alice"], USERS["bob"]])
        assert b.reload_users() == 2
        again = await Raw.open(b)
        assert await again.connack(connect_packet("bob", "bob", "pw-b")) == (0, 0)
        again.close()
