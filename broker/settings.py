"""Settings of the embedded broker, from MAPLEVERSE_BROKER_* environment variables::

MAPLEVERSE_BROKER_HOST             address to bind (default 127.0.0.1, loopback only)
MAPLEVERSE_BROKER_PORT             MQTT/TCP port (default 1883; 0 picks a free port)
MAPLEVERSE_BROKER_WS_PORT          MQTT-over-WebSocket port (default 9001; 0 disables)
MAPLEVERSE_BROKER_USERS_FILE       the users file (YAML, see broker.users); required
MAPLEVERSE_BROKER_TOPICS_FILE      topics.yaml (default: the packaged one)
MAPLEVERSE_BROKER_ROOT             topic root the ACL applies under (default mv)
MAPLEVERSE_BROKER_PORT_FALLBACK    take the next free port when a port is in use (true)
MAPLEVERSE_BROKER_MAX_PACKET_SIZE  largest MQTT packet accepted, bytes (65536; 0 = no limit)
MAPLEVERSE_BROKER_LOG_LEVEL        DEBUG, INFO, WARNING or ERROR (default INFO)
MAPLEVERSE_BROKER_DATA_DIR         directory where retained messages and persistent sessions are
                                   saved on a clean stop and restored on start (default: none,
                                   they live in memory only)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.errors import SettingsError

__all__ = ["ENV_PREFIX", "BrokerSettings", "load_settings"]

ENV_PREFIX = "MAPLEVERSE_BROKER_"
_ROOT_RE = re.compile(r"^([a-z0-9_-]+|\+)(/([a-z0-9_-]+|\+))*$")

_EXPECTS = {
    "host": "an IP address or host name to bind",
    "port": "a port number 0-65535 (0 picks a free port)",
    "ws_port": "a port number 0-65535 (0, none or off disables the WebSocket listener)",
    "users_file": "the path of the users file (YAML: version 1, users: [{name, role, password_hash}])",
    "topics_file": "the path of topics.yaml",
    "root": "topic levels of [a-z0-9_-]+ separated by '/' (or '+' for any one-level root)",
    "port_fallback": "true or false",
    "max_packet_size": "a byte count of at least 20, or 0 for no limit",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "data_dir": "the path of a directory for the broker's state (empty or none: in memory only)",
}


class BrokerSettings(BaseSettings):
    """Validated, frozen settings of the embedded broker."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=0, le=65535)
    ws_port: int | None = Field(default=9001, ge=0, le=65535)
    users_file: Path
    topics_file: Path | None = None
    root: str = "mv"
    port_fallback: bool = True
    max_packet_size: int = Field(default=65536, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path | None = None

    @field_validator("root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        if not _ROOT_RE.match(value):
            raise ValueError("bad root")
        return value

    @field_validator("ws_port", mode="before")
    @classmethod
    def _ws_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _no_data_dir(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("max_packet_size")
    @classmethod
    def _check_packet_size(cls, value: int) -> int:
        if 0 < value < 20:
            raise ValueError("too small")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def ws_enabled(self) -> bool:
        """Whether the WebSocket listener is on (ws_port neither 0 nor None)."""
        return bool(self.ws_port)


def load_settings(**overrides: Any) -> BrokerSettings:
    """Settings from the environment (and `overrides`); SettingsError names the variable."""
    try:
        return BrokerSettings(**overrides)
    except ValidationError as exc:
        raise _settings_error(exc, overrides) from None


def _settings_error(exc: ValidationError, overrides: Mapping[str, Any]) -> SettingsError:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "?"
    variable = field if field in overrides else f"{ENV_PREFIX}{field.upper()}"
    expects = _EXPECTS.get(field, "a valid value")
    if error["type"] == "missing":
        return SettingsError(variable, f"is missing, and has no default (expects {expects})")
    if error["type"] == "extra_forbidden":
        return SettingsError(variable, "is not a broker setting")
    return SettingsError(variable, f"got {error.get('input')!r}; expects {expects}")
