"""Settings every component shares: the bus connection plus identity, health and metrics."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bus.settings import BusSettings

__all__ = ["ComponentSettings", "WorldSettings"]


class ComponentSettings(BusSettings):
    """`MAPLEVERSE_*` variables of a component process."""

    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    id: str = Field(default="main", pattern=r"^[a-z0-9_-]+$", description="component instance id")
    heartbeat_interval: float = Field(
        default=1.0, gt=0, le=3600, description="seconds between heartbeats"
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="HTTP port of /metrics; unset: no server"
    )
    metrics_host: str = Field(default="127.0.0.1", description="address of /metrics")
    log_level: str = Field(
        default="INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )


class WorldSettings(ComponentSettings):
    """Settings of a component of a world: which world, and where its state is persisted."""

    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    world: str = Field(
        default="main", pattern=r"^[a-z0-9_-]+$", description="the world this component serves"
    )
    store_url: str = Field(
        default="sqlite+aiosqlite:///.mapleverse/mapleverse.db",
        description="sqlite+aiosqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB",
    )
    behaviour_plugins: str = Field(
        default="",
        description="custom behaviours: module:function entries, comma-separated (world/plugins)",
    )
