"""bus.transport.mqtt against a raw TCP peer: what goes on the wire, and when."""

from __future__ import annotations

import socket
import threading
import time

from bus.transport import packets
from bus.transport.base import ConnectParams, Incoming
from bus.transport.mqtt import MqttTransport


class _Sink:
    def deliver(self, message: Incoming) -> None:
        pass

    def acked(self, pid: int) -> None:
        pass

    def lost(self, exc: BaseException | None) -> None:
        pass


class _Peer(threading.Thread):
    """A broker stand-in: answers CONNECT with CONNACK, then counts the bytes it receives and
    when they came."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[tuple[float, int]] = []

    def run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.recv(65536)  # the CONNECT
            conn.sendall(bytes([0x20, 2, 0, 0]))
            while data := conn.recv(1 << 20):
                self.received.append((time.monotonic(), len(data)))

    def bytes_by(self, moment: float) -> int:
        return sum(n for t, n in self.received if t <= moment)


async def test_large_messages_reach_the_wire_while_the_producer_is_still_busy() -> None:
    # A district encodes a tick's batches in one go, without yielding to the event loop; each
    # must leave as it is made, not when the whole tick is done (small ones are coalesced).
    peer = _Peer()
    peer.start()
    conn = await MqttTransport().connect(
        ConnectParams(host="127.0.0.1", port=peer.port, client_id="t", keepalive=0), _Sink()
    )
    try:
        payload = b"x" * 40_000  # over the 32 KiB that go at once; 80 KB fit any socket buffer
        size = len(packets.publish(b"t/a", payload, 0, False, 0, False))
        for _ in range(2):
            conn.write_publish(b"t/a", payload, 0, False, 0, False)
        time.sleep(0.3)  # noqa: ASYNC251 - the point: busy, the event loop does not turn
        busy_until = time.monotonic()
        assert peer.bytes_by(busy_until) >= 2 * size
    finally:
        await conn.close()
        peer.server.close()
