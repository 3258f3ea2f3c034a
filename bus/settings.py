"""Settings of a bus connection, and the one loader that turns environment errors into words.

`load_settings(Model)` reads `MAPLEVERSE_*` variables; a missing or bad value raises
`SettingsError` naming the variable and what it expects, e.g.::

    MAPLEVERSE_PORT: expected an integer from 1 to 65535, got 'abc'
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.errors import BusError

__all__ = ["BusSettings", "SettingsError", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


class SettingsError(BusError):
    """A setting is missing or has a bad value; the message names the variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class BusSettings(BaseSettings):
    """How to reach the broker; every field is `MAPLEVERSE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="broker host")
    port: int = Field(default=1883, ge=1, le=65535, description="broker MQTT port")
    username: str | None = Field(default=None, description="broker user (also the client id)")
    password: SecretStr | None = Field(default=None, description="broker password")
    client_id: str | None = Field(default=None, description="defaults to the username")
    root: str = Field(
        default="mv", pattern=r"^[a-z0-9_-]+(/[a-z0-9_-]+)*$", description="topic root prefix"
    )
    clean_session: bool = Field(default=False, description="false: persistent session")
    keepalive: int = Field(default=30, ge=0, le=65535, description="MQTT keepalive, seconds")
    queue_size: int = Field(default=10_000, ge=1, description="incoming messages held at most")
    max_inflight: int = Field(
        default=2_000, ge=1, le=49151, description="unacknowledged QoS 1 publishes at most"
    )
    max_packet_size: int = Field(default=65536, ge=1024, description="broker's packet limit")
    reconnect_min: float = Field(default=0.05, gt=0, description="first reconnect delay, s")
    reconnect_max: float = Field(default=5.0, gt=0, description="longest reconnect delay, s")
    connect_timeout: float = Field(default=5.0, gt=0, description="one connect attempt, s")
    request_timeout: float = Field(default=5.0, gt=0, description="request/reply timeout, s")


_EXPECT = {
    "int_parsing": "an integer",
    "float_parsing": "a number",
    "bool_parsing": "true or false",
    "missing": "a value (it has no default)",
}


def _describe(model: type[BaseSettings], error: dict[str, Any]) -> str:
    prefix = str(model.model_config.get("env_prefix", ""))
    loc = error.get("loc", ())
    field = str(loc[0]) if loc else "?"
    var = f"{prefix}{field}".upper()
    info = model.model_fields.get(field)
    desc = f" ({info.description})" if info is not None and info.description else ""
    expects = _EXPECT.get(error.get("type", ""), error.get("msg", "a valid value"))
    expects = expects.removeprefix("Value error, ")
    if error.get("type") in (
        "greater_than_equal",
        "less_than_equal",
        "greater_than",
        "less_than",
        "string_pattern_mismatch",
        "literal_error",
    ):
        expects = error.get("msg", "").lower()
    if error.get("type") == "missing":
        return f"{var} is missing, and has no default{desc}"
    got = error.get("input")
    if "password" in field or "secret" in field:
        got = "***"
    elif isinstance(got, str):
        got = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", got)  # a password inside a URL
    return f"{var}: expected {expects}{desc}, got {got!r}"


def load_settings(model: type[S], **overrides: Any) -> S:
    """Build `model` from the environment (and overrides); SettingsError names the variable."""
    try:
        return model(**overrides)
    except ValidationError as exc:
        raise SettingsError([_describe(model, dict(e)) for e in exc.errors()]) from exc
