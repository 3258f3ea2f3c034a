"""Transports: the real MQTT connection and the in-memory broker for tests."""

from bus.transport.base import Connection, ConnectParams, Incoming, Sink, Transport, Will
from bus.transport.memory import MemoryBroker, MemoryTransport
from bus.transport.mqtt import MqttTransport

__all__ = [
    "ConnectParams",
    "Connection",
    "Incoming",
    "MemoryBroker",
    "MemoryTransport",
    "MqttTransport",
    "Sink",
    "Transport",
    "Will",
]
