"""bus.transport.packets: MQTT 3.1.1 encoding and the incremental decoder."""

from __future__ import annotations

import pytest

from bus.transport import packets
from bus.transport.packets import Decoder, Packet, ProtocolViolation


def _roundtrip(raw: bytes) -> tuple[str, bytes, int, bool, bool, int]:
    (packet,) = Decoder().feed(raw)
    assert packet.kind == packets.PUBLISH
    return packets.parse_publish(packet.flags, packet.body)


@pytest.mark.parametrize(
    ("qos", "retain", "dup", "pid"),
    [(0, False, False, 0), (0, True, False, 0), (1, False, False, 1), (1, True, True, 65535)],
)
def test_publish_round_trip(qos: int, retain: bool, dup: bool, pid: int) -> None:
    raw = packets.publish(b"mv/sys/health", b'{"ok":true}', qos, retain, pid, dup)
    assert _roundtrip(raw) == ("mv/sys/health", b'{"ok":true}', qos, retain, dup, pid)
    assert len(raw) == packets.publish_size(b"mv/sys/health", b'{"ok":true}', qos)


def test_publish_fixed_header_flags_and_bytes() -> None:
    # QoS 1, retain, dup; topic 'a/b', pid 10, payload 'x'
    raw = packets.publish(b"a/b", b"x", 1, True, 10, True)
    assert raw == bytes([0x3B, 8, 0, 3]) + b"a/b" + bytes([0, 10]) + b"x"
    raw0 = packets.publish(b"a/b", b"", 0, False, 0, False)
    assert raw0 == bytes([0x30, 5, 0, 3]) + b"a/b"


@pytest.mark.parametrize(
    ("size", "length_bytes"),
    [
        (0, 1),
        (100, 1),
        (127 - 5, 1),  # remaining length 127: the largest one-byte length
        (128 - 5, 2),
        (16383 - 5, 2),
        (16384 - 5, 3),  # > 16383: three bytes
        (70_000, 3),
        (2_097_151 - 5, 3),  # remaining length 2097151: the largest three-byte length
        (2_097_152 - 5, 4),
        (3 * 1024 * 1024, 4),  # > 2 MB
    ],
)
def test_remaining_length_boundaries_round_trip(size: int, length_bytes: int) -> None:
    topic = b"a/b"  # 2 + 3 bytes of topic before the payload at QoS 0
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = packets.publish(topic, payload, 0, False, 0, False)
    assert len(raw) == 1 + length_bytes + 5 + size
    assert packets.publish_size(topic, payload, 0) == len(raw)
    assert _roundtrip(raw) == ("a/b", payload, 0, False, False, 0)


def test_large_qos1_publish_round_trip() -> None:
    payload = b"z" * (2 * 1024 * 1024 + 17)
    raw = packets.publish(b"mv/big", payload, 1, False, 4242, False)
    topic, body, qos, _, _, pid = _roundtrip(raw)
    assert (topic, qos, pid, len(body)) == ("mv/big", 1, 4242, len(payload))
    assert body == payload


def test_connect_minimal_matches_the_hand_computed_bytes() -> None:
    raw = packets.connect("c", clean_session=True, keepalive=60)
    expected = (
        b"\x10\x0d"  # CONNECT, remaining length 13
        b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)
        b"\x02"  # flags: clean session
        b"\x00\x3c"  # keepalive 60
        b"\x00\x01c"  # client id
    )
    assert raw == expected


def test_connect_with_will_and_credentials_matches_the_hand_computed_bytes() -> None:
    raw = packets.connect(
        "c",
        clean_session=False,
        keepalive=10,
        username="u",
        password="p",
        will_topic="w",
        will_payload=b"x",
        will_qos=1,
        will_retain=True,
    )
    expected = (
        b"\x10\x19"  # remaining length 10 + 5 * 3 = 25
        b"\x00\x04MQTT\x04"
        b"\xec"  # user 0x80 | password 0x40 | will retain 0x20 | will qos 1 << 3 | will 0x04
        b"\x00\x0a"
        b"\x00\x01c"
        b"\x00\x01w"
        b"\x00\x01x"
        b"\x00\x01u"
        b"\x00\x01p"
    )
    assert raw == expected


def test_small_control_packets() -> None:
    assert packets.puback(258) == b"\x40\x02\x01\x02"
    assert packets.subscribe(1, [("a/+", 1)]) == b"\x82\x08\x00\x01\x00\x03a/+\x01"
    assert packets.unsubscribe(2, ["a/#"]) == b"\xa2\x07\x00\x02\x00\x03a/#"
    assert packets.PINGREQ == b"\xc0\x00"
    assert packets.DISCONNECT == b"\xe0\x00"


def test_decoder_fed_byte_by_byte_yields_every_packet_once() -> None:
    stream = b"".join(
        [
            packets.publish(b"t/1", b"a" * 200, 1, False, 1, False),  # two-byte length
            b"\x20\x02\x00\x00",  # CONNACK, accepted
            packets.publish(b"t/2", b"", 0, True, 0, False),
            b"\xd0\x00",  # PINGRESP: an empty body
            packets.publish(b"t/3", b"c" * 20_000, 1, False, 3, True),  # three-byte length
            b"\x40\x02\x00\x07",  # PUBACK 7
        ]
    )
    decoder = Decoder()
    got: list[Packet] = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert [p.kind for p in got] == [
        packets.PUBLISH,
        packets.CONNACK,
        packets.PUBLISH,
        packets.PINGRESP,
        packets.PUBLISH,
        packets.PUBACK,
    ]
    assert packets.parse_publish(got[0].flags, got[0].body) == (
        "t/1",
        b"a" * 200,
        1,
        False,
        False,
        1,
    )
    assert got[1].body == b"\x00\x00"
    assert packets.parse_publish(got[2].flags, got[2].body)[:4] == ("t/2", b"", 0, True)
    assert got[3].body == b""
    assert packets.parse_publish(got[4].flags, got[4].body)[1] == b"c" * 20_000
    assert packets.parse_pid(got[5].body) == 7
    assert decoder.feed(b"") == []


def test_decoder_handles_packets_split_anywhere_and_several_per_chunk() -> None:
    one = packets.publish(b"x", b"1" * 300, 1, False, 9, False)
    stream = one * 5
    for cut in range(1, len(one) + 3):
        decoder = Decoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert len(got) == 5, cut
        assert all(packets.parse_publish(p.flags, p.body)[1] == b"1" * 300 for p in got)


def test_decoder_refuses_a_malformed_remaining_length() -> None:
    with pytest.raises(ProtocolViolation, match="malformed"):
        Decoder().feed(b"\x30\xff\xff\xff\xff\x01")


def test_decoder_refuses_packets_over_its_limit() -> None:
    decoder = Decoder(max_packet=1000)
    with pytest.raises(ProtocolViolation, match="exceeds 1000"):
        decoder.feed(packets.publish(b"t", b"y" * 1000, 0, False, 0, False)[:10])
