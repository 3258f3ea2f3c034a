"""Settings of the health monitor."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import ComponentSettings

__all__ = ["HealthSettings"]


class HealthSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    health_missed_beats: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="heartbeat intervals without a beat before a component is stale",
    )
    health_publish_interval: float = Field(
        default=5.0, gt=0, description="seconds between summaries when nothing changes"
    )
    health_forget_after: float = Field(
        default=3600.0, gt=0, description="seconds after which an offline component is dropped"
    )
