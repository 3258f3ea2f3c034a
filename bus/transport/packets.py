"""MQTT 3.1.1 packet encoding and an incremental decoder (the subset the platform uses).

Client side only: CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT are
encoded; CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK and PINGRESP are decoded. QoS 2 is not used
(NATS's MQTT interface offers no QoS 2); an incoming QoS 2 PUBLISH is treated as QoS 1.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
UNSUBSCRIBE = 0xA2
UNSUBACK = 0xB0
PINGREQ = b"\xc0\x00"
PINGRESP = 0xD0
DISCONNECT = b"\xe0\x00"

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

_pack_h = struct.Struct("!H").pack
_unpack_h = struct.Struct("!H").unpack_from


def _remaining_length(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _pack_h(len(raw)) + raw


def connect(
    client_id: str,
    *,
    clean_session: bool,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
    will_topic: str | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        payload += _string(will_topic) + _string(will_payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    variable = _string("MQTT") + bytes((4, flags)) + _pack_h(keepalive)
    body = variable + payload
    return bytes((CONNECT,)) + _remaining_length(len(body)) + body


def publish(topic: bytes, payload: bytes, qos: int, retain: bool, pid: int, dup: bool) -> bytes:
    header = PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    tlen = len(topic)
    if qos:
        length = 2 + tlen + 2 + len(payload)
        return b"".join(
            (
                bytes((header,)),
                _remaining_length(length),
                _pack_h(tlen),
                topic,
                _pack_h(pid),
                payload,
            )
        )
    length = 2 + tlen + len(payload)
    return b"".join((bytes((header,)), _remaining_length(length), _pack_h(tlen), topic, payload))


def publish_size(topic: bytes, payload: bytes, qos: int) -> int:
    """Size on the wire of a PUBLISH (brokers' max packet size counts the whole packet)."""
    length = 2 + len(topic) + (2 if qos else 0) + len(payload)
    return 1 + len(_remaining_length(length)) + length


def puback(pid: int) -> bytes:
    return b"\x40\x02" + _pack_h(pid)


def subscribe(pid: int, filters: Sequence[tuple[str, int]]) -> bytes:
    body = _pack_h(pid) + b"".join(_string(f) + bytes((q,)) for f, q in filters)
    return bytes((SUBSCRIBE,)) + _remaining_length(len(body)) + body


def unsubscribe(pid: int, filters: Sequence[str]) -> bytes:
    body = _pack_h(pid) + b"".join(_string(f) for f in filters)
    return bytes((UNSUBSCRIBE,)) + _remaining_length(len(body)) + body


class Packet(NamedTuple):
    kind: int  # high nibble of the fixed header, e.g. PUBLISH
    flags: int  # low nibble
    body: bytes


class ProtocolViolation(Exception):
    """The peer sent bytes that are not MQTT 3.1.1."""


class Decoder:
    """Incremental decoder: feed bytes, get whole packets."""

    def __init__(self, max_packet: int = 16 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_packet

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            first = buf[pos]
            mult = 1
            length = 0
            i = pos + 1
            while True:
                if i >= n:
                    break
                byte = buf[i]
                length += (byte & 0x7F) * mult
                i += 1
                if not byte & 0x80:
                    break
                mult *= 128
                if mult > 128**3:
                    raise ProtocolViolation("malformed remaining length")
            else:  # pragma: no cover - loop always breaks
                pass
            if i > n or (i == n and buf[i - 1] & 0x80):
                break
            if length > self._max:
                raise ProtocolViolation(f"packet of {length} bytes exceeds {self._max}")
            end = i + length
            if end > n:
                break
            out.append(Packet(first & 0xF0, first & 0x0F, bytes(buf[i:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


def parse_publish(flags: int, body: bytes) -> tuple[str, bytes, int, bool, bool, int]:
    """(topic, payload, qos, retain, dup, pid) of a PUBLISH body."""
    qos = (flags >> 1) & 0x03
    (tlen,) = _unpack_h(body, 0)
    topic = body[2 : 2 + tlen].decode("utf-8", "replace")
    pos = 2 + tlen
    pid = 0
    if qos:
        (pid,) = _unpack_h(body, pos)
        pos += 2
    return topic, body[pos:], qos, bool(flags & 0x01), bool(flags & 0x08), pid


def parse_pid(body: bytes) -> int:
    return int(_unpack_h(body, 0)[0])
