"""Settings of the store (`MAPLEVERSE_STORE_*`) and of the Redis cache (`MAPLEVERSE_REDIS_*`).

Load them with `bus.settings.load_settings(StoreSettings)`: a bad value raises `SettingsError`
naming the variable, e.g. ``MAPLEVERSE_STORE_URL: expected ...``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_STORE_URL", "RedisSettings", "StoreSettings", "own_sqlite_url"]

DEFAULT_STORE_URL = "sqlite+aiosqlite:///.mapleverse/mapleverse.db"
_DRIVERS = ("sqlite+aiosqlite://", "postgresql+psycopg://")


class StoreSettings(BaseSettings):
    """Where the state lives; every field is `MAPLEVERSE_STORE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_STORE_", frozen=True, extra="ignore")

    url: str = Field(
        default=DEFAULT_STORE_URL,
        description="sqlite+aiosqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB",
    )
    echo: bool = Field(default=False, description="log every SQL statement")

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(_DRIVERS):
            raise ValueError("a URL starting with " + " or ".join(_DRIVERS))
        return value


class RedisSettings(BaseSettings):
    """How to reach Redis; every field is `MAPLEVERSE_REDIS_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_REDIS_", frozen=True, extra="ignore")

    url: str = Field(default="redis://127.0.0.1:6379/0", description="redis://[:PASS@]HOST:PORT/DB")
    prefix: str = Field(default="mv:", min_length=1, description="prefix of every cache key")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("a URL starting with redis://, rediss:// or unix://")
        return value


def own_sqlite_url(store_url: str, name: str) -> str:
    """A SQLite file `name` beside `store_url`'s, for a writer that needs a file of its own
    (`store.plain`); any other database: `store_url` itself."""
    prefix = "sqlite+aiosqlite:///"
    if not store_url.startswith(prefix):
        return store_url
    return prefix + str(PurePosixPath(store_url.removeprefix(prefix)).with_name(name))
