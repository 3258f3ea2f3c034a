"""The typed MQTT bus every Mapleverse component and Python agent uses."""

from bus.batching import BatchPublisher, rows
from bus.client import Bus
from bus.codecs import Envelope
from bus.errors import (
    BusError,
    ConnectionFailed,
    NotConnected,
    PacketTooLarge,
    PayloadError,
    RequestTimeout,
    TopicError,
    TopicsFileError,
)
from bus.settings import BusSettings, SettingsError, load_settings
from bus.subscription import Message, Subscription
from bus.topics import QoS, Topic, TopicSpec, TopicTree, load, matches
from bus.transport import MemoryBroker, MemoryTransport, MqttTransport, Transport

__all__ = [
    "BatchPublisher",
    "Bus",
    "BusError",
    "BusSettings",
    "ConnectionFailed",
    "Envelope",
    "MemoryBroker",
    "MemoryTransport",
    "Message",
    "MqttTransport",
    "NotConnected",
    "PacketTooLarge",
    "PayloadError",
    "QoS",
    "RequestTimeout",
    "SettingsError",
    "Subscription",
    "Topic",
    "TopicError",
    "TopicSpec",
    "TopicTree",
    "TopicsFileError",
    "Transport",
    "load",
    "load_settings",
    "matches",
    "rows",
]
