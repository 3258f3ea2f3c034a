"""Errors raised by the broker package.

Hierarchy::

    BrokerError
    ├── PasswordHashError   a password hash is not in Mosquitto's `$7$` PBKDF2-SHA512 format
    ├── UsersFileError      the users file cannot be read or is invalid (names the file and entry)
    ├── SettingsError       a MAPLEVERSE_BROKER_* value is missing or wrong (names the variable)
    └── BrokerStartError    the embedded broker could not start (port in use, bad listener)
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error raised by the broker package."""


class PasswordHashError(BrokerError):
    """A password hash is not in Mosquitto's `$7$<iterations>$<salt>$<hash>` format."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid password hash: {reason}")
        self.reason = reason


class UsersFileError(BrokerError):
    """The users file cannot be read or holds an invalid entry."""

    def __init__(self, reason: str, *, path: str | None = None, entry: str | None = None) -> None:
        where = f"{path}: " if path else ""
        what = f"user {entry!r}: " if entry else ""
        super().__init__(f"{where}{what}{reason}")
        self.reason = reason
        self.path = path
        self.entry = entry


class SettingsError(BrokerError):
    """A broker setting is missing or has a bad value; names the environment variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class BrokerStartError(BrokerError):
    """The embedded broker could not start."""

    def __init__(self, reason: str, *, host: str = "", port: int = 0) -> None:
        where = f" on {host}:{port}" if host else ""
        super().__init__(f"cannot start the broker{where}: {reason}")
        self.reason = reason
        self.host = host
        self.port = port
