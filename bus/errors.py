"""Errors raised by the bus.

Hierarchy::

    BusError
    ├── TopicError            a topic name, pattern, parameter or declaration is wrong
    │   └── TopicsFileError   topics.yaml cannot be loaded (names the entry and the problem)
    ├── PayloadError          a payload fails to decode or validate (carries topic and reason)
    ├── ConnectionFailed      the broker refused or could not be reached
    ├── NotConnected          an operation needs a live connection and there is none
    ├── PacketTooLarge        a message would exceed the broker's packet limit
    └── RequestTimeout        no reply to a request within its timeout
"""

from __future__ import annotations


class BusError(Exception):
    """Root of every error raised by the bus."""


class TopicError(BusError):
    """A topic name, pattern, parameter or declaration is wrong."""

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class TopicsFileError(TopicError):
    """topics.yaml cannot be loaded; names the entry and the problem."""

    def __init__(self, message: str, *, entry: str | None = None, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        what = f"entry {entry!r}: " if entry else ""
        super().__init__(f"{where}{what}{message}")
        self.entry = entry
        self.path = path


class PayloadError(BusError):
    """A payload failed to decode or validate."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        super().__init__(f"{topic}: {reason}" if topic else reason)
        self.reason = reason
        self.topic = topic


class ConnectionFailed(BusError):
    """The broker refused the connection or could not be reached."""

    def __init__(self, reason: str, *, host: str = "", port: int = 0, code: int | None = None):
        super().__init__(f"cannot connect to {host}:{port}: {reason}")
        self.reason = reason
        self.host = host
        self.port = port
        self.code = code


class NotConnected(BusError):
    """An operation needs a live connection and there is none."""


class PacketTooLarge(BusError):
    """A message would exceed the broker's packet limit."""

    def __init__(self, size: int, limit: int, *, topic: str | None = None) -> None:
        super().__init__(f"{topic}: message of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit
        self.topic = topic


class RequestTimeout(BusError):
    """No reply arrived within the request's timeout."""

    def __init__(self, topic: str, timeout: float) -> None:
        super().__init__(f"no reply to {topic} within {timeout:g}s")
        self.topic = topic
        self.timeout = timeout
